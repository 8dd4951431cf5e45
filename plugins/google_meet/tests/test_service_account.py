"""``auth = "company"``: the service account acts for each user by the JWT-bearer grant, one token per user."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pipedrive_video_bridge_google_meet import GoogleMeetBackend
from pipedrive_video_bridge_google_meet.fake_google import FakeGoogleState
from pipedrive_video_bridge_google_meet.oauth import JWT_BEARER, SCOPE, SERVICE_ACCOUNT_TOKEN

from bridge.plugin import BackendContext, BackendError, Room
from bridge.testing import InMemoryCredentials, make_context, sample_meeting, sample_user

pytestmark = pytest.mark.anyio


async def test_the_assertion_is_a_signed_jwt_with_googles_claims(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext, key_file: Path
) -> None:
    await company_backend.create(company_context, sample_meeting())
    [claims] = google.assertions
    record = json.loads(key_file.read_text())
    assert claims["header"] == {"alg": "RS256", "typ": "JWT", "kid": record["private_key_id"]}
    assert (claims["iss"], claims["sub"], claims["scope"]) == (record["client_email"], "ada@example.com", SCOPE)
    assert claims["aud"] == google.token_uri
    assert 0 < claims["exp"] - claims["iat"] <= 3600 and abs(claims["iat"] - time.time()) < 60
    assert google.token_requests == {JWT_BEARER: 1}


async def test_the_event_is_made_on_the_users_own_calendar(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, http: httpx.AsyncClient
) -> None:
    room = await company_backend.create(
        make_context(http, user=sample_user(email="host@example.com")), sample_meeting()
    )
    assert room.vendor_meeting_id.startswith("host@example.com/")
    assert list(google.events("host@example.com")) == [room.vendor_meeting_id.split("/")[1]]
    assert google.events("ada@example.com") == {}


async def test_one_token_per_user_serves_a_hundred_concurrent_creates(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    google.token_delay = 0.2
    rooms: list[Room] = []

    async def create() -> None:
        rooms.append(await company_backend.create(company_context, sample_meeting()))

    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(create)
    assert google.token_requests == {JWT_BEARER: 1}
    assert len({room.vendor_meeting_id for room in rooms}) == 100
    stored = json.loads(await company_context.credentials.get(SERVICE_ACCOUNT_TOKEN) or "{}")
    assert stored["access_token"] in google.access_tokens, "kept in the user's own credentials"
    assert stored["subject"] == "ada@example.com"
    assert await company_context.shared.get(SERVICE_ACCOUNT_TOKEN) is None


async def test_each_user_has_a_token_of_their_own(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, http: httpx.AsyncClient
) -> None:
    ada = make_context(http, user=sample_user(email="ada@example.com"))
    front_desk = make_context(http, user=sample_user(link_id="other-link", email="host@example.com"))
    for ctx in (ada, front_desk, ada, front_desk):
        await company_backend.create(ctx, sample_meeting())
    assert google.token_requests == {JWT_BEARER: 2}
    assert [claims["sub"] for claims in google.assertions] == ["ada@example.com", "host@example.com"]


async def test_a_stored_token_of_another_subject_or_account_is_replaced(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    await company_backend.create(company_context, sample_meeting())
    record = json.loads(await company_context.credentials.get(SERVICE_ACCOUNT_TOKEN) or "{}")
    for changed in ({"subject": "someone@example.com"}, {"client_email": "old@x.iam.gserviceaccount.com"}):
        await company_context.credentials.set(SERVICE_ACCOUNT_TOKEN, json.dumps({**record, **changed}))
        await company_backend.create(company_context, sample_meeting())
    assert google.token_requests[JWT_BEARER] == 3


async def test_an_invalid_token_is_fetched_again_once_and_the_call_repeated_once(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    await company_backend.create(company_context, sample_meeting())
    google.expire_access_tokens()  # Google answers 401 authError
    before = google.count("POST")
    await company_backend.create(company_context, sample_meeting())
    assert google.token_requests[JWT_BEARER] == 2 and google.count("POST") - before == 2


async def test_a_token_google_keeps_refusing_is_a_clear_error_after_one_retry(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    google.access_ttl = -1
    with pytest.raises(BackendError) as raised:
        await company_backend.create(company_context, sample_meeting())
    assert google.token_requests[JWT_BEARER] == 2 and google.count("POST") == 2
    assert "access token" in raised.value.message and raised.value.status == 502


async def test_delegation_not_granted_for_the_scope_says_where_to_grant_it(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext, key_file: Path
) -> None:
    google.delegated_scopes = {"https://www.googleapis.com/auth/gmail.readonly"}  # unauthorized_client
    with pytest.raises(BackendError) as raised:
        await company_backend.create(company_context, sample_meeting())
    message = raised.value.message
    client_id = json.loads(key_file.read_text())["client_id"]
    assert "domain-wide delegation is not granted for the scope " + SCOPE in message
    assert "Domain-wide delegation" in message and client_id in message
    assert google.api_requests == [] and await company_context.credentials.get(SERVICE_ACCOUNT_TOKEN) is None


async def test_a_user_outside_the_domain_is_told_what_is_wrong(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, http: httpx.AsyncClient
) -> None:
    ctx = make_context(http, user=sample_user(email="nobody@elsewhere.example"))
    with pytest.raises(BackendError) as raised:
        await company_backend.create(ctx, sample_meeting())
    assert "Google Workspace has no user nobody@elsewhere.example" in raised.value.message


async def test_a_key_google_does_not_know_says_to_make_a_new_one(
    google: FakeGoogleState, http: httpx.AsyncClient, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = google.new_service_account(tmp_path, name="rotated", key=rsa_key)
    google.service_accounts.clear()  # the key was deleted in the Cloud console: Invalid JWT Signature
    backend = GoogleMeetBackend.from_config(google.backend_config(service_account_file=str(path)))
    with pytest.raises(BackendError) as raised:
        await backend.create(make_context(http), sample_meeting())
    assert "Invalid JWT Signature" in raised.value.message and "new JSON key" in raised.value.message


async def test_a_key_signed_by_another_private_key_is_refused(
    google: FakeGoogleState, http: httpx.AsyncClient, tmp_path: Path, key_file: Path
) -> None:
    record = json.loads(key_file.read_text())
    other = google.new_service_account(tmp_path, name="other")
    record["private_key"] = json.loads(other.read_text())["private_key"]  # not the key Google has for this id
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(record))
    backend = GoogleMeetBackend.from_config(google.backend_config(service_account_file=str(forged)))
    with pytest.raises(BackendError, match="Invalid JWT Signature"):
        await backend.create(make_context(http), sample_meeting())


async def test_a_user_without_email_is_told_to_add_one(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, http: httpx.AsyncClient
) -> None:
    with pytest.raises(BackendError) as raised:
        await company_backend.create(make_context(http, user=sample_user(email="")), sample_meeting())
    assert "no e-mail address" in raised.value.message
    assert (
        google.token_requests == {}
        and await company_backend.list_rooms(make_context(http, user=sample_user(email=""))) == []
    )


async def test_refusals_never_show_the_key(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext, key_file: Path
) -> None:
    google.delegated_scopes = set()
    with pytest.raises(BackendError) as raised:
        await company_backend.create(company_context, sample_meeting())
    pem = json.loads(key_file.read_text())["private_key"]
    assert all(line not in raised.value.message for line in pem.splitlines()[1:-2])


def test_the_assertion_verifies_with_the_public_key(
    google: FakeGoogleState, company_backend: GoogleMeetBackend
) -> None:
    tokens = company_backend.tokens
    assertion = tokens.assertion("ada@example.com")  # type: ignore[attr-defined]
    [account] = google.service_accounts.values()
    claims = jwt.decode(assertion, account.public_key, algorithms=["RS256"], audience=google.token_uri)
    assert claims["sub"] == "ada@example.com"


async def test_another_replica_with_the_same_credentials_reuses_the_token(
    google: FakeGoogleState, key_file: Path, http: httpx.AsyncClient
) -> None:
    credentials = InMemoryCredentials()
    for _ in range(2):
        replica = GoogleMeetBackend.from_config(google.backend_config(service_account_file=str(key_file)))
        await replica.create(make_context(http, credentials=credentials), sample_meeting())
    assert google.token_requests == {JWT_BEARER: 1}


async def test_an_assertion_out_of_googles_timeframe_points_at_the_clock(
    google: FakeGoogleState,
    company_backend: GoogleMeetBackend,
    company_context: BackendContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipedrive_video_bridge_google_meet.oauth.ASSERTION_SECONDS", 7200)  # Google allows 3600
    with pytest.raises(BackendError) as raised:
        await company_backend.create(company_context, sample_meeting())
    assert "check that the server's clock is right" in raised.value.message
