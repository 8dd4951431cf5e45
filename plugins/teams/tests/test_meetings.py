"""Making, moving and deleting Teams meetings with the company's app, against the fake Graph: what each
answer becomes, and every refusal an admin can meet, each with its own message."""

from __future__ import annotations

import logging
import secrets

import anyio
import httpx
import pytest
from pipedrive_video_bridge_teams import TeamsBackend
from pipedrive_video_bridge_teams.fake_teams import FakeTeamsState

from bridge.plugin import BackendContext, BackendError, BackendUnavailable, VendorRoom
from bridge.testing import make_context, sample_meeting, sample_user

pytestmark = pytest.mark.anyio

ADA = "6e7b768e-07e2-4810-8459-485f84f8f204"
FRONT_DESK = "2c0f3b8e-3d71-4b6a-9a4c-1f0b5e9d7a11"


async def test_a_meeting_is_made_for_the_users_entra_user_with_its_key_as_external_id(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    key = secrets.token_hex(8)
    meeting = sample_meeting(key=key, join_link="https://bridge.example.com/j/abc")
    room = await company_backend.create(company_context, meeting)

    [(meeting_id, made)] = teams.meetings.items()
    assert made["organizer"] == ADA and made["externalId"] == f"pvb-{key}"
    assert made["subject"] == meeting.topic
    assert made["startDateTime"] == meeting.start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert made["endDateTime"] == meeting.end_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert room.vendor_meeting_id == f"{ADA}:{meeting_id}" and room.join_url == made["joinWebUrl"]
    assert room.password is None
    # the invitation carries the bridge's link, the ID and passcode for the Teams app, and the dial-in
    settings, audio = made["joinMeetingIdSettings"], made["audioConferencing"]
    assert "Join: https://bridge.example.com/j/abc" in room.invitation and made["joinWebUrl"] not in room.invitation
    spaced = " ".join(settings["joinMeetingId"][i : i + 3] for i in range(0, 12, 3))
    assert f"Meeting ID: {spaced}" in room.invitation and f"Passcode: {settings['passcode']}" in room.invitation
    assert (
        audio["tollNumber"] in room.invitation and f"Phone conference ID: {audio['conferenceId']}#" in room.invitation
    )


async def test_the_same_key_twice_answers_the_same_meeting_and_makes_no_second(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    meeting = sample_meeting(key=secrets.token_hex(8))
    first = await company_backend.create(company_context, meeting)
    again = await company_backend.create(company_context, meeting)  # a retry after a lost answer
    assert again.vendor_meeting_id == first.vendor_meeting_id and again.join_url == first.join_url
    assert len(teams.meetings) == 1
    assert await company_backend.find_rooms(company_context, meeting.key) == [
        VendorRoom(first.vendor_meeting_id, meeting.key)
    ]
    assert len(teams.meetings) == 1, "finding the key makes nothing new"


async def test_a_create_whose_answer_was_lost_is_sent_again_and_answers_the_meeting_it_made(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    await company_backend.create(company_context, sample_meeting())  # the user's id is known from here on
    teams.lost_next = 1  # Graph makes the meeting, but a gateway answers 504
    room = await company_backend.create(company_context, sample_meeting(key=secrets.token_hex(8)))
    assert teams.count("POST", "/createOrGet") == 3, "the lost createOrGet was sent again"
    assert len(teams.meetings) == 2 and room.vendor_meeting_id.endswith(list(teams.meetings)[-1])


async def test_finding_a_key_nobody_made_a_meeting_for_makes_one_the_sweep_then_removes(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    key = secrets.token_hex(8)
    [found] = await company_backend.find_rooms(company_context, key)
    assert found.key == key and len(teams.meetings) == 1
    await company_backend.delete(company_context, found.vendor_meeting_id)
    assert teams.meetings == {}


async def test_the_entra_user_is_looked_up_once_per_process(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    for _ in range(3):
        await company_backend.create(company_context, sample_meeting())
    assert teams.count("GET", "/v1.0/users/ada@example.com") == 1


async def test_an_unknown_user_goes_to_the_fallback_organizer(
    teams: FakeTeamsState, http: httpx.AsyncClient, company_context: BackendContext
) -> None:
    backend = TeamsBackend.from_config(teams.backend_config(fallback_organizer="frontdesk@example.com"))
    stranger = make_context(http, user=sample_user(email="stranger@elsewhere.example"))
    room = await backend.create(stranger, sample_meeting())
    assert room.vendor_meeting_id.startswith(FRONT_DESK + ":")
    nobody = make_context(http, user=sample_user(email=""))
    assert (await backend.create(nobody, sample_meeting())).vendor_meeting_id.startswith(FRONT_DESK + ":")


async def test_an_unknown_user_without_a_fallback_is_told_what_to_do(
    teams: FakeTeamsState, company_backend: TeamsBackend, http: httpx.AsyncClient
) -> None:
    stranger = make_context(http, user=sample_user(email="stranger@elsewhere.example"))
    with pytest.raises(BackendError, match=r"stranger@elsewhere\.example is not a user of your company's Microsoft"):
        await company_backend.create(stranger, sample_meeting())
    nobody = make_context(http, user=sample_user(email=""))
    with pytest.raises(BackendError, match=r"no e-mail address .* fallback_organizer"):
        await company_backend.create(nobody, sample_meeting())
    assert teams.meetings == {}


async def test_a_user_no_access_policy_covers_gets_the_powershell_to_run(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    teams.users[0].policy = False
    with pytest.raises(BackendError) as raised:
        await company_backend.create(company_context, sample_meeting())
    message = str(raised.value)
    assert "ada@example.com" in message
    assert "New-CsApplicationAccessPolicy" in message and "Grant-CsApplicationAccessPolicy" in message
    assert "up to 30 minutes" in message


async def test_an_unlicensed_user_is_told_so(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    teams.users[0].licensed = False
    with pytest.raises(BackendError, match="has no Microsoft Teams licence"):
        await company_backend.create(company_context, sample_meeting())


async def test_missing_admin_consent_names_the_permissions(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    teams.app_roles.discard("User.Read.All")
    with pytest.raises(BackendError, match=r"User\.Read\.All .* grant admin consent"):
        await company_backend.create(company_context, sample_meeting())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"client_secret": "wrong-secret"}, "client_secret is wrong or has expired"),
        ({"client_id": "99999999-2222-4333-8444-555555555555"}, "no app with this client_id exists"),
        ({"tenant_id": "00000000-0000-4000-8000-000000000000"}, "tenant_id is not a Microsoft Entra tenant"),
    ],
)
async def test_wrong_app_credentials_say_which_setting_is_wrong(
    teams: FakeTeamsState, company_context: BackendContext, change: dict[str, str], expected: str
) -> None:
    backend = TeamsBackend.from_config(teams.backend_config(**change))
    with pytest.raises(BackendError) as raised:
        await backend.create(company_context, sample_meeting())
    assert expected in str(raised.value) and "[backends.teams]" in str(raised.value)
    assert teams.client_secret not in str(raised.value) and "wrong-secret" not in str(raised.value)


async def test_the_company_token_is_fetched_once_for_concurrent_calls_and_renewed_when_graph_refuses_it(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    teams.token_delay = 0.2
    async with anyio.create_task_group() as tasks:
        for _ in range(10):
            tasks.start_soon(company_backend.create, company_context, sample_meeting())
    assert teams.token_requests == {"client_credentials": 1} and len(teams.meetings) == 10
    teams.expire_access_tokens()  # Graph answers 401 until the bridge gets a new token
    await company_backend.create(company_context, sample_meeting())
    assert teams.token_requests == {"client_credentials": 2}


async def test_throttling_is_waited_out_with_retry_after(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    teams.busy_next = ["0", "0"]
    await company_backend.create(company_context, sample_meeting())
    assert len(teams.meetings) == 1
    teams.busy_next = ["0"] * 5  # more than the retries allow
    with pytest.raises(BackendUnavailable):
        await company_backend.create(company_context, sample_meeting())


async def test_a_move_patches_start_and_end_together_and_rewrites_the_invitation(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    room = await company_backend.create(company_context, sample_meeting())
    moved = sample_meeting(topic="Moved", duration=90, join_link="https://bridge.example.com/j/xyz")
    after = await company_backend.update(company_context, room.vendor_meeting_id, moved)
    [made] = teams.meetings.values()
    assert (made["subject"], made["endDateTime"]) == ("Moved", moved.end_time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert after.vendor_meeting_id == room.vendor_meeting_id and after.join_url == room.join_url
    assert "Topic: Moved" in after.invitation and "(90 minutes)" in after.invitation
    assert "Join: https://bridge.example.com/j/xyz" in after.invitation and "Meeting ID:" in after.invitation


async def test_a_meeting_deleted_in_teams_is_deleted_for_the_bridge_and_cannot_be_moved(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    room = await company_backend.create(company_context, sample_meeting())
    await company_backend.delete(company_context, room.vendor_meeting_id)
    assert teams.meetings == {} and len(teams.deleted) == 1
    await company_backend.delete(company_context, room.vendor_meeting_id)  # already gone: fine
    with pytest.raises(BackendError, match="no longer exists"):
        await company_backend.update(company_context, room.vendor_meeting_id, sample_meeting())


async def test_a_meeting_keeps_its_organizer_after_the_fallback_changes(
    teams: FakeTeamsState, http: httpx.AsyncClient
) -> None:
    stranger = make_context(http, user=sample_user(email="stranger@elsewhere.example"))
    before = TeamsBackend.from_config(teams.backend_config(fallback_organizer="frontdesk@example.com"))
    room = await before.create(stranger, sample_meeting())
    after = TeamsBackend.from_config(teams.backend_config(fallback_organizer="ada@example.com"))
    await after.update(stranger, room.vendor_meeting_id, sample_meeting(topic="Moved"))
    await after.delete(stranger, room.vendor_meeting_id)
    assert teams.meetings == {}


@pytest.mark.parametrize("vendor_id", ["no-separator", ":only-meeting", "only-organizer:"])
async def test_an_id_this_bridge_did_not_make_is_refused_without_a_call(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext, vendor_id: str
) -> None:
    with pytest.raises(BackendError, match="not a Teams meeting this bridge made"):
        await company_backend.delete(company_context, vendor_id)
    assert teams.api_requests == []


async def test_a_graph_answer_without_a_meeting_is_a_clear_error(
    teams: FakeTeamsState, company_backend: TeamsBackend, company_context: BackendContext
) -> None:
    room = await company_backend.create(company_context, sample_meeting())
    [made] = teams.meetings.values()
    made["joinWebUrl"] = "teams:/not-a-web-link"
    with pytest.raises(BackendError, match="not an https URL"):
        await company_backend.update(company_context, room.vendor_meeting_id, sample_meeting())


async def test_no_secret_reaches_the_log(
    teams: FakeTeamsState,
    company_backend: TeamsBackend,
    company_context: BackendContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    room = await company_backend.create(company_context, sample_meeting())
    await company_backend.delete(company_context, room.vendor_meeting_id)
    logged = caplog.text
    assert teams.client_secret and teams.client_secret not in logged
    assert not any(token in logged for token in teams.issued_secrets)
