"""Tests of the BigBlueButton backend against the fake server (``fake_bbb``) on loopback, which speaks the
documented API, through the core's own retry transport; and end to end through the bridge's join links."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pipedrive_video_bridge_bigbluebutton import CHECKSUMS, BigBlueButtonBackend, checksum
from pipedrive_video_bridge_bigbluebutton.fake_bbb import FAKE_SECRET, FakeBigBlueButton, running_fake_bbb

from bridge.plugin import GUEST, HOST, Backend, BackendContext, BackendError, BackendUnavailable, Joining
from bridge.testing import (
    BackendConformance,
    Config,
    RetryPolicy,
    RetryTransport,
    bridge_client,
    make_config,
    make_context,
    prepared_store,
    sample_meeting,
)

LINK = "https://bridge.example.com/j/" + "T" * 32


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def bbb() -> Iterator[FakeBigBlueButton]:
    with running_fake_bbb() as fake:
        yield fake


def backend_for(fake: FakeBigBlueButton, **settings: Any) -> BigBlueButtonBackend:
    return BigBlueButtonBackend.from_config(fake.backend_config(**settings))


@pytest.fixture
async def context() -> AsyncIterator[BackendContext]:
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, max_retry_after=5)
    async with httpx.AsyncClient(transport=RetryTransport(httpx.AsyncHTTPTransport(), policy), timeout=2) as http:
        yield make_context(http)


def joining(room_id: str, role: str, *, name: str = "", topic: str = "Demo with Acme") -> Joining:
    return Joining(room_id, sample_meeting(topic=topic, join_link=LINK), role, join_url=LINK, name=name)


async def follow(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as browser:
        return await browser.get(url, follow_redirects=False)


class TestBigBlueButtonConformance(BackendConformance):
    @pytest.fixture
    def backend(self, bbb: FakeBigBlueButton) -> Backend:
        return backend_for(bbb)

    @pytest.fixture
    def vendor_secrets(self) -> list[str]:
        return [FAKE_SECRET]


# --- create, join, end -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_makes_nothing_on_the_server_and_hands_out_the_join_link(
    bbb: FakeBigBlueButton, context: BackendContext
) -> None:
    room = await backend_for(bbb).create(context, sample_meeting(key="0123456789abcdef", join_link=LINK))
    assert bbb.events == []
    assert room.join_url == LINK and LINK in room.invitation and bbb.api_url not in room.invitation
    assert room.vendor_meeting_id.startswith("pvb-0123456789abcdef-") and "," not in room.vendor_meeting_id


@pytest.mark.anyio
async def test_without_the_bridges_join_links_create_says_what_to_set(
    bbb: FakeBigBlueButton, context: BackendContext
) -> None:
    with pytest.raises(BackendError, match='join_links = "bridge"'):
        await backend_for(bbb).create(context, sample_meeting())


@pytest.mark.anyio
async def test_the_first_click_starts_the_meeting_and_the_organiser_joins_as_moderator(
    bbb: FakeBigBlueButton, context: BackendContext
) -> None:
    backend = backend_for(bbb, record=True, welcome="Hello")
    room = await backend.create(context, sample_meeting(join_link=LINK))
    url = await backend.join_url(context, joining(room.vendor_meeting_id, HOST, name="Ada Lovelace"))
    assert url.startswith(bbb.api_url + "/join?")
    assert [call for call, _ in bbb.events] == ["create"]
    made = bbb.meetings[room.vendor_meeting_id]
    assert made["name"] == "Demo with Acme" and made["record"] == "true"
    opened = await follow(url)
    assert opened.status_code == 302 and opened.headers["location"].startswith(bbb.base_url + "/client/")
    assert [(j.meeting_id, j.full_name, j.role) for j in bbb.joins] == [
        (room.vendor_meeting_id, "Ada Lovelace", "MODERATOR")
    ]


@pytest.mark.anyio
async def test_a_later_click_joins_the_running_meeting_as_a_viewer(
    bbb: FakeBigBlueButton, context: BackendContext
) -> None:
    backend = backend_for(bbb)
    room = await backend.create(context, sample_meeting(join_link=LINK))
    await follow(await backend.join_url(context, joining(room.vendor_meeting_id, HOST, name="Ada")))
    guest_url = await backend.join_url(context, joining(room.vendor_meeting_id, GUEST))
    await follow(guest_url)
    assert list(bbb.meetings) == [room.vendor_meeting_id]  # one meeting; create again was a duplicateWarning
    assert [(j.full_name, j.role) for j in bbb.joins] == [("Ada", "MODERATOR"), ("Guest", "VIEWER")]
    query = parse_qs(urlsplit(guest_url).query)
    assert query["role"] == ["VIEWER"] and "userID" not in query


@pytest.mark.anyio
async def test_a_guest_cannot_turn_a_viewer_url_into_a_moderators(
    bbb: FakeBigBlueButton, context: BackendContext
) -> None:
    backend = backend_for(bbb)
    room = await backend.create(context, sample_meeting(join_link=LINK))
    guest_url = await backend.join_url(context, joining(room.vendor_meeting_id, GUEST))
    forged = guest_url.replace("role=VIEWER", "role=MODERATOR")
    answer = await follow(forged)
    assert answer.status_code == 200 and "checksumError" in answer.text and not bbb.joins


@pytest.mark.anyio
async def test_delete_ends_a_running_meeting_and_one_not_running_is_fine(
    bbb: FakeBigBlueButton, context: BackendContext
) -> None:
    backend = backend_for(bbb)
    room = await backend.create(context, sample_meeting(join_link=LINK))
    await backend.delete(context, room.vendor_meeting_id)  # never started: notFound counts as ended
    await backend.join_url(context, joining(room.vendor_meeting_id, GUEST))
    assert room.vendor_meeting_id in bbb.meetings
    await backend.delete(context, room.vendor_meeting_id)
    assert bbb.meetings == {} and bbb.events[-1] == ("end", room.vendor_meeting_id)


@pytest.mark.anyio
@pytest.mark.parametrize("algorithm", CHECKSUMS)
async def test_every_checksum_algorithm_works_with_a_server_set_to_it(algorithm: str, context: BackendContext) -> None:
    with running_fake_bbb(FakeBigBlueButton(algorithms=(algorithm,))) as bbb:
        backend = backend_for(bbb, checksum=algorithm)
        room = await backend.create(context, sample_meeting(join_link=LINK))
        url = await backend.join_url(context, joining(room.vendor_meeting_id, GUEST))
        assert len(parse_qs(urlsplit(url).query)["checksum"][0]) == hashlib.new(algorithm).digest_size * 2
        assert (await follow(url)).status_code == 302


def test_the_checksum_is_the_hash_of_call_query_and_secret() -> None:
    assert (
        checksum("create", "name=Test&meetingID=abc123", "secret", "sha1")
        == hashlib.sha1(b"createname=Test&meetingID=abc123secret").hexdigest()
    )


@pytest.mark.anyio
async def test_a_wrong_secret_says_so_without_showing_it(bbb: FakeBigBlueButton, context: BackendContext) -> None:
    wrong = "not-the-servers-secret-at-all"
    backend = BigBlueButtonBackend.from_config({"url": bbb.api_url, "secret": wrong})
    with pytest.raises(BackendError) as raised:
        await backend.join_url(context, joining("pvb-abc", GUEST))
    assert "secret" in str(raised.value) and "bbb-conf --secret" in str(raised.value)
    assert wrong not in str(raised.value) and FAKE_SECRET not in str(raised.value)
    assert bbb.meetings == {}


@pytest.mark.anyio
async def test_a_server_set_to_another_algorithm_is_a_checksum_error(context: BackendContext) -> None:
    with (
        running_fake_bbb(FakeBigBlueButton(algorithms=("sha1",))) as bbb,
        pytest.raises(BackendError, match='checksum = "sha1"'),
    ):
        await backend_for(bbb).join_url(context, joining("pvb-abc", GUEST))


@pytest.mark.anyio
async def test_a_server_that_is_down_or_not_bigbluebutton_is_unavailable(
    bbb: FakeBigBlueButton, context: BackendContext
) -> None:
    bbb.down = True
    with pytest.raises(BackendUnavailable, match="HTTP 503"):
        await backend_for(bbb).join_url(context, joining("pvb-abc", GUEST))
    bbb.down = False
    not_an_api = BigBlueButtonBackend.from_config({"url": bbb.base_url + "/other/api", "secret": FAKE_SECRET})
    with pytest.raises(BackendUnavailable, match="url"):
        await not_an_api.join_url(context, joining("pvb-abc", GUEST))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"secret": FAKE_SECRET}, "url: required"),
        ({"url": "ftp://bbb.example.com/bigbluebutton/api", "secret": FAKE_SECRET}, "url: must be an http"),
        ({"url": "https://bbb.example.com/", "secret": FAKE_SECRET}, "ending in /api"),
        ({"url": "https://bbb.example.com/bigbluebutton/api"}, "secret: required"),
        ({"url": "https://bbb.example.com/bigbluebutton/api", "secret": "short"}, "secret: required"),
        ({"url": "https://b.example/bigbluebutton/api", "secret": FAKE_SECRET, "checksum": "md5"}, "checksum"),
        ({"url": "https://b.example/bigbluebutton/api", "secret": FAKE_SECRET, "record": "yes"}, "record"),
        ({"url": "https://b.example/bigbluebutton/api", "secret": FAKE_SECRET, "guest_name": " "}, "guest_name"),
        ({"url": "https://b.example/bigbluebutton/api", "secret": FAKE_SECRET, "sercet": "x"}, "unknown setting"),
    ],
)
def test_config_problems_are_named(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        BigBlueButtonBackend.from_config(settings)
    assert FAKE_SECRET not in str(raised.value)


# --- end to end: Pipedrive, the join link, the server ----------------------------------------


@pytest.fixture
def config(tmp_path: Path, bbb: FakeBigBlueButton) -> Config:
    return make_config(
        tmp_path,
        backends={"bigbluebutton": bbb.backend_config()},
        meetings={"default_backend": "bigbluebutton", "allowed_backends": ["bigbluebutton"]},
    )


@pytest.mark.anyio
async def test_end_to_end_post_first_click_creates_second_joins_delete_ends(
    config: Config, bbb: FakeBigBlueButton
) -> None:
    async with prepared_store(config) as store:
        link = await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Ada Lovelace")
    async with bridge_client(config, entry_points=True) as pipedrive:
        created = await pipedrive.post(
            f"/api/v1/links/{link.id}/meetings",
            json={"topic": "Demo with Acme", "start_time": "2031-05-14 09:30", "duration": 30},
        )
        assert created.status_code == 201, created.text
        data = created.json()["data"]
        assert data["join_url"].startswith("https://bridge.example.com/j/") and bbb.events == []

        for _ in range(2):  # two guests, one after the other
            click = await pipedrive.get(data["join_url"], headers={"Authorization": ""})
            assert click.status_code == 303 and click.headers["location"].startswith(bbb.api_url + "/join?")
            assert (await follow(click.headers["location"])).status_code == 302
        [meeting_id] = bbb.meetings
        assert bbb.meetings[meeting_id]["name"] == "Demo with Acme"
        assert [(j.meeting_id, j.role) for j in bbb.joins] == [(meeting_id, "VIEWER")] * 2
        assert [call for call, _ in bbb.events] == ["create", "join", "create", "join"]

        deleted = await pipedrive.delete(f"/api/v1/links/{link.id}/meetings/{data['meeting_id']}")
        assert deleted.status_code == 204
        assert bbb.meetings == {} and bbb.events[-1] == ("end", meeting_id)
        gone = await pipedrive.get(data["join_url"], headers={"Authorization": ""})
        assert gone.status_code == 410 and "cancelled" in gone.text


@pytest.mark.anyio
async def test_end_to_end_a_wrong_secret_is_a_page_saying_so(tmp_path: Path, bbb: FakeBigBlueButton) -> None:
    config = make_config(
        tmp_path,
        backends={"bigbluebutton": {**bbb.backend_config(), "secret": "a-wrong-shared-secret"}},
        meetings={"default_backend": "bigbluebutton", "allowed_backends": ["bigbluebutton"]},
    )
    async with prepared_store(config) as store:
        link = await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Ada Lovelace")
    async with bridge_client(config, entry_points=True) as pipedrive:
        created = await pipedrive.post(
            f"/api/v1/links/{link.id}/meetings",
            json={"topic": "Demo", "start_time": "2031-05-14 09:30", "duration": 30},
        )
        assert created.status_code == 201  # nothing reaches the server before the first click
        page = await pipedrive.get(created.json()["data"]["join_url"], headers={"Authorization": ""})
    assert page.status_code == 502 and page.headers["content-type"].startswith("text/html")
    assert "does not match the server" in page.text and "a-wrong-shared-secret" not in page.text


@pytest.mark.anyio
async def test_vendor_join_links_are_refused_for_it_at_start(tmp_path: Path, bbb: FakeBigBlueButton) -> None:
    config = make_config(
        tmp_path,
        backends={"bigbluebutton": {**bbb.backend_config(), "join_links": "vendor"}},
        meetings={"default_backend": "bigbluebutton", "allowed_backends": ["bigbluebutton"]},
    )
    with pytest.raises(Exception, match=r'\[backends.bigbluebutton\] join_links: .*join_links = "bridge"'):
        async with bridge_client(config, entry_points=True):
            pass
