"""Join links the bridge serves: ``<public_url>/j/<token>`` in the 201, resolved at every click.

Through the app over HTTP with the conftest's fake vendor: what Pipedrive gets, where a
click lands (the room the meeting has now, the organiser's way in or a guest's), the
pages for cancelled, ended and unknown meetings, the limit on unknown tokens, and
``join_links = "vendor"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import text

from bridge.config import Config
from bridge.limits import MissLimiter
from bridge.runtime import StartupError
from bridge.signing import Signer
from bridge.storage.links import Link
from bridge.storage.store import Store
from bridge.testing import bridge_client, make_config, prepared_store
from bridge.vendors.hookspecs import hookimpl
from bridge.vendors.interface import GUEST, HOST, Backend, BackendContext, MeetingRequest, Room
from bridge.web.sessions import SESSION_COOKIE
from tests.conftest import FakeVendor

pytestmark = pytest.mark.anyio

BODY = {"topic": "Demo with Acme", "start_time": "2030-01-01 10:00", "duration": 30}
PUBLIC = "https://bridge.example.com"
LINK = re.compile(re.escape(PUBLIC) + r"/j/([A-Za-z0-9_-]{32})")


def join_config(tmp_path: Path, database_url: str, **meetings: Any) -> Config:
    return make_config(
        tmp_path,
        database_url,
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other", "joining"], **meetings},
    )


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    return join_config(tmp_path, database_url)


@pytest.fixture
async def client(config: Config, fake_plugin: Any, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with bridge_client(config, [fake_plugin]) as client:
        yield client


async def post(client: httpx.AsyncClient, link: Link, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/api/v1/links/{link.id}/meetings", json={**BODY, **body})
    assert response.status_code == 201, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


async def click(
    client: httpx.AsyncClient, url: str, *, method: str = "GET", cookies: dict[str, str] | None = None
) -> httpx.Response:
    """Open a join link as a browser does (no Pipedrive credentials, no following the redirect)."""
    headers = {"Authorization": ""}
    if cookies:
        headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    return await client.request(method, url, headers=headers, follow_redirects=False)


def organiser_cookie(store: Store, link: Link) -> dict[str, str]:
    """The settings session a sign-in of this link's user would start (signed with the app's key)."""
    assert store.vault is not None
    payload = {
        "link": link.id,
        "uid": link.pipedrive_user_id,
        "cid": link.company_id,
        "sid": "sid-of-a-test",
        "gen": link.session_generation,
    }
    return {SESSION_COOKIE: Signer(store.vault.derive("signing")).sign("session", payload, 3600)}


async def use_backend(store: Store, link: Link, backend: str) -> None:
    await store.set_link_backend(link.id, backend)


# --- what Pipedrive gets ---------------------------------------------------------------


async def test_pipedrive_gets_the_bridges_link_and_the_invitation_carries_it(
    client: httpx.AsyncClient, link: Link, vendor: FakeVendor
) -> None:
    data = await post(client, link)
    found = LINK.fullmatch(data["join_url"])
    assert found, data["join_url"]
    token = found.group(1)
    assert len(token) * 6 >= 128  # at least 128 random bits
    assert data["meeting_id"] not in token and link.id not in data["join_url"]
    assert data["join_url"] in data["invitation"]
    assert "video.example.com" not in data["invitation"]  # the vendor's URL is the bridge's business now
    assert data["password"] == "s3cret-pass" and "s3cret-pass" in data["invitation"]
    room = next(iter(vendor.rooms.values()))
    assert room.join_link == data["join_url"]  # the backend was told the link it hands out


async def test_each_meeting_gets_its_own_token(client: httpx.AsyncClient, link: Link) -> None:
    urls = {(await post(client, link, topic=f"Call {n}"))["join_url"] for n in range(5)}
    assert len(urls) == 5


async def test_a_retried_post_meeting_answers_the_same_link(client: httpx.AsyncClient, link: Link) -> None:
    first = await post(client, link)
    again = await post(client, link)
    assert again == first


async def test_the_database_keeps_only_the_tokens_hash(
    client: httpx.AsyncClient, link: Link, store: Store, config: Config
) -> None:
    data = await post(client, link)
    token = LINK.fullmatch(data["join_url"]).group(1)  # type: ignore[union-attr]
    with store.engine.connect() as conn:
        keys = conn.execute(text("SELECT join_key FROM meeting")).scalars().all()
        dump = "\n".join(
            str(row) for table in ("meeting", "secret") for row in conn.execute(text(f"SELECT * FROM {table}"))
        )
    assert keys == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in dump and data["join_url"] not in dump


# --- a click -------------------------------------------------------------------------


async def test_a_click_goes_to_the_room_without_caching_or_referrer(client: httpx.AsyncClient, link: Link) -> None:
    data = await post(client, link)
    response = await click(client, data["join_url"])
    assert response.status_code == 303
    assert response.headers["location"] == "https://video.example.com/fake-1"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    head = await click(client, data["join_url"], method="HEAD")
    assert (head.status_code, head.headers["location"], head.content) == (303, response.headers["location"], b"")


async def test_a_moved_meeting_opens_its_new_room_from_the_same_link(
    client: httpx.AsyncClient, link: Link, vendor: FakeVendor
) -> None:
    data = await post(client, link)
    vendor.new_room_on_update = True
    moved = await client.patch(
        f"/api/v1/links/{link.id}/meetings/{data['meeting_id']}", json={**BODY, "start_time": "2030-02-01 10:00"}
    )
    assert moved.status_code == 204
    response = await click(client, data["join_url"])
    assert response.headers["location"] == "https://video.example.com/fake-2"
    assert (await post(client, link, start_time="2030-02-01 10:00"))["join_url"] != data["join_url"]


async def test_the_organiser_signed_in_gets_the_hosts_way_in_and_a_guest_the_guests(
    client: httpx.AsyncClient, link: Link, store: Store, vendor: FakeVendor
) -> None:
    await use_backend(store, link, "joining")
    data = await post(client, link)
    guest = await click(client, data["join_url"])
    host = await click(client, data["join_url"], cookies=organiser_cookie(store, link))
    assert parse_qs(urlsplit(guest.headers["location"]).query)["role"] == [GUEST]
    host_query = parse_qs(urlsplit(host.headers["location"]).query)
    assert host_query["role"] == [HOST] and host_query["name"] == ["Ada Lovelace"]
    first, second = vendor.joins
    assert (first.role, first.name, second.role) == (GUEST, "", HOST)
    assert second.meeting.topic == "Demo with Acme" and second.meeting.duration == 30
    assert second.meeting.join_link == data["join_url"] and second.join_url == "https://video.example.com/joining-1"
    # asked at each click: every click gets what the backend mints at that moment
    again = await click(client, data["join_url"])
    assert again.headers["location"] != guest.headers["location"]


async def test_another_users_session_or_an_ended_one_is_a_guest(
    client: httpx.AsyncClient, link: Link, store: Store, vendor: FakeVendor
) -> None:
    await use_backend(store, link, "joining")
    data = await post(client, link)
    other = await store.create_link(pipedrive_user_id=999, company_id=202, user_name="Eve", user_email="e@x.io")
    await click(client, data["join_url"], cookies=organiser_cookie(store, other))
    stale = organiser_cookie(store, link)
    await store.end_sessions(link.id)
    await click(client, data["join_url"], cookies=stale)
    forged = {SESSION_COOKIE: organiser_cookie(store, link)[SESSION_COOKIE][:-4] + "AAAA"}
    await click(client, data["join_url"], cookies=forged)
    assert [j.role for j in vendor.joins] == [GUEST, GUEST, GUEST]


# --- pages instead of a room --------------------------------------------------------------


async def test_a_cancelled_meetings_link_shows_so(client: httpx.AsyncClient, link: Link) -> None:
    data = await post(client, link)
    deleted = await client.delete(f"/api/v1/links/{link.id}/meetings/{data['meeting_id']}")
    assert deleted.status_code == 204
    for method in ("GET", "HEAD"):
        response = await click(client, data["join_url"], method=method)
        assert response.status_code == 410 and "location" not in response.headers
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-store"
    assert "cancelled" in (await click(client, data["join_url"])).text


async def test_a_meeting_long_past_its_end_shows_it_has_ended(client: httpx.AsyncClient, link: Link) -> None:
    recent = await post(client, link, start_time="2020-01-01 10:00")
    response = await click(client, recent["join_url"])
    assert response.status_code == 410 and "location" not in response.headers
    assert "has ended" in response.text and "01 January 2020" in response.text


async def test_a_meeting_just_over_can_still_be_joined(tmp_path: Path, database_url: str, fake_plugin: Any) -> None:
    config = join_config(tmp_path, database_url, join_open_hours=100_000)
    async with prepared_store(config) as store, bridge_client(config, [fake_plugin]) as client:
        link = await store.create_link(pipedrive_user_id=1, company_id=2, user_name="A", user_email="a@x.io")
        data = await post(client, link, start_time="2020-01-01 10:00")
        assert (await click(client, data["join_url"])).status_code == 303


async def test_an_uninstalled_organisers_meeting_is_no_longer_available(
    client: httpx.AsyncClient, link: Link, store: Store
) -> None:
    data = await post(client, link)
    await store.uninstall_link(link.id)
    response = await click(client, data["join_url"])
    assert response.status_code == 410 and "location" not in response.headers


@pytest.mark.parametrize(
    "path",
    [
        "/j/" + "A" * 32,
        "/j/" + "A" * 31,
        "/j/" + "A" * 33,
        "/j/short",
        "/j/%00%ff%fe" + "a" * 28,
        "/j/..%2f..%2fetc%2fpasswd",
        "/j/" + "x" * 5000,
        "/j/<script>alert(1)</script>",
        "/j/",
        "/j",
    ],
)
async def test_unknown_and_malformed_tokens_are_a_404_page(client: httpx.AsyncClient, path: str) -> None:
    response = await click(client, PUBLIC + path)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "location" not in response.headers and "<script>" not in response.text


async def test_a_client_guessing_tokens_is_held_off_and_others_are_not(
    tmp_path: Path, database_url: str, fake_plugin: Any
) -> None:
    config = join_config(tmp_path, database_url, join_misses_per_minute=5)
    async with prepared_store(config) as store, bridge_client(config, [fake_plugin]) as client:
        link = await store.create_link(pipedrive_user_id=1, company_id=2, user_name="A", user_email="a@x.io")
        data = await post(client, link)
        statuses = [(await click(client, f"{PUBLIC}/j/{'B' * 31}{n}")).status_code for n in range(5)]
        assert statuses == [404] * 5
        refused = await click(client, f"{PUBLIC}/j/{'C' * 32}")
        assert refused.status_code == 429 and 0 < int(refused.headers["retry-after"]) <= 60
        # while held off, a right guess teaches nothing either
        assert (await click(client, data["join_url"])).status_code == 429
        metrics = (await client.get("/metrics")).text
        assert 'pvb_join_clicks_total{backend="-",outcome="unknown",role="-"} 5.0' in metrics
        assert 'pvb_join_clicks_total{backend="-",outcome="limited",role="-"} 2.0' in metrics


def test_the_miss_limiter_counts_per_client_per_minute_and_forgets_the_oldest() -> None:
    limiter = MissLimiter(2, max_clients=3)
    for _ in range(2):
        limiter.miss("a", 100.0)
    assert limiter.wait("a", 100.0) == 60.0 and limiter.wait("b", 100.0) == 0.0
    assert limiter.wait("a", 130.0) == 30.0 and limiter.wait("a", 160.0) == 0.0
    limiter.miss("a", 160.0)
    assert limiter.wait("a", 160.0) == 0.0  # a new minute starts a new count
    for client in ("b", "c", "d"):
        limiter.miss(client, 161.0)
    assert len(limiter._windows) == 3 and "a" not in limiter._windows


# --- a backend that fails at the click ----------------------------------------------------


async def test_a_vendor_failing_at_the_click_is_a_page_not_a_500(
    client: httpx.AsyncClient, link: Link, store: Store, vendor: FakeVendor
) -> None:
    from bridge.errors import BackendUnavailable

    await use_backend(store, link, "joining")
    data = await post(client, link)
    vendor.fail["join"] = BackendUnavailable("Joining Video is down")
    response = await click(client, data["join_url"])
    assert response.status_code == 503 and response.headers["content-type"].startswith("text/html")
    assert "Joining Video is down" in response.text
    vendor.fail["join"] = RuntimeError("a bug in the plugin")
    response = await click(client, data["join_url"])
    assert response.status_code == 502 and "RuntimeError" not in response.text
    assert (await click(client, data["join_url"])).status_code == 303  # the next click works again


def refusing_plugin(url: str) -> Any:
    class BadJoin(Backend):
        name = "badjoin"
        title = "Bad Join"

        async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
            return Room("room-1", "https://video.example.com/room-1", f"Join: {meeting.join_link}")

        async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> None:
            return None

        async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
            return None

        async def join_url(self, ctx: BackendContext, joining: Any) -> str:
            return joining.meeting.join_link if url == "itself" else url

    class Plugin:
        @staticmethod
        @hookimpl
        def register_backends(register: Any) -> None:
            register(BadJoin)

    return Plugin()


@pytest.mark.parametrize("url", ["javascript:alert(1)", "/relative", "", "itself", "https://a.example/x y"])
async def test_a_backend_giving_an_unusable_url_is_a_502_page(tmp_path: Path, database_url: str, url: str) -> None:
    config = make_config(
        tmp_path, database_url, meetings={"default_backend": "badjoin", "allowed_backends": ["badjoin"]}
    )
    async with prepared_store(config) as store, bridge_client(config, [refusing_plugin(url)]) as client:
        link = await store.create_link(pipedrive_user_id=1, company_id=2, user_name="A", user_email="a@x.io")
        data = await post(client, link)
        response = await click(client, data["join_url"])
        if url == "":
            assert response.status_code == 303  # nothing from the backend: the room's own URL
            assert response.headers["location"] == "https://video.example.com/room-1"
        else:
            assert response.status_code == 502 and "location" not in response.headers


async def test_a_meeting_whose_backend_is_gone_is_a_503_page(
    tmp_path: Path, database_url: str, fake_plugin: Any, config: Config
) -> None:
    async with prepared_store(config) as store, bridge_client(config, [fake_plugin]) as client:
        link = await store.create_link(pipedrive_user_id=1, company_id=2, user_name="A", user_email="a@x.io")
        data = await post(client, link)
    async with bridge_client(config, []) as client:  # the plugin was uninstalled
        response = await click(client, data["join_url"])
    assert response.status_code == 503 and response.headers["content-type"].startswith("text/html")


# --- the vendor's links instead ---------------------------------------------------------


async def test_join_links_vendor_hands_pipedrive_the_vendors_url(
    tmp_path: Path, database_url: str, fake_plugin: Any
) -> None:
    config = join_config(tmp_path, database_url, join_links="vendor")
    async with prepared_store(config) as store, bridge_client(config, [fake_plugin]) as client:
        link = await store.create_link(pipedrive_user_id=1, company_id=2, user_name="A", user_email="a@x.io")
        data = await post(client, link)
        assert data["join_url"] == "https://video.example.com/fake-1"
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT join_key FROM meeting")).scalars().all() == [None]


async def test_a_backends_own_join_links_setting_overrides_the_default(
    tmp_path: Path, database_url: str, fake_plugin: Any
) -> None:
    config = make_config(
        tmp_path,
        database_url,
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other"]},
        backends={"other": {"join_links": "vendor"}},
    )
    assert config.backend_table("other") == {}  # the core's setting, not handed to the plugin
    async with prepared_store(config) as store, bridge_client(config, [fake_plugin]) as client:
        link = await store.create_link(pipedrive_user_id=1, company_id=2, user_name="A", user_email="a@x.io")
        assert LINK.fullmatch((await post(client, link))["join_url"])
        await use_backend(store, link, "other")
        assert (await post(client, link))["join_url"] == "https://video.example.com/other-2"


async def test_meetings_keep_the_link_pipedrive_has_when_the_setting_changes(
    tmp_path: Path, database_url: str, fake_plugin: Any, vendor: FakeVendor
) -> None:
    bridge_links = join_config(tmp_path, database_url)
    vendor_links = dataclasses.replace(
        bridge_links, meetings=dataclasses.replace(bridge_links.meetings, join_links="vendor")
    )
    async with prepared_store(bridge_links) as store:
        link = await store.create_link(pipedrive_user_id=1, company_id=2, user_name="A", user_email="a@x.io")
    async with bridge_client(bridge_links, [fake_plugin]) as client:
        served = await post(client, link, topic="Made with bridge links")
    async with bridge_client(vendor_links, [fake_plugin]) as client:
        direct = await post(client, link, topic="Made with vendor links")
        # the link made earlier still opens its room, and a retry of it still answers it
        assert (await click(client, served["join_url"])).headers["location"] == "https://video.example.com/fake-1"
        assert (await post(client, link, topic="Made with bridge links")) == served
    async with bridge_client(bridge_links, [fake_plugin]) as client:
        assert (await post(client, link, topic="Made with vendor links")) == direct
        vendor.new_room_on_update = True
        moved = await client.patch(
            f"/api/v1/links/{link.id}/meetings/{direct['meeting_id']}",
            json={**BODY, "topic": "Made with vendor links", "start_time": "2030-03-01 10:00"},
        )
        assert moved.status_code == 204
    async with prepared_store(bridge_links) as store:
        with store.engine.connect() as conn:
            keys = dict(conn.execute(text("SELECT id, join_key FROM meeting")).all())
    assert keys[direct["meeting_id"]] is None  # a move gives no link Pipedrive would never hear of


def create_on_join_plugin() -> Any:
    class OnJoin(Backend):
        name = "onjoin"
        title = "On Join"
        creates_on_join = True

        async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
            return Room("m-1", meeting.join_link, f"Join: {meeting.join_link}")

        async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> None:
            return None

        async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
            return None

    class Plugin:
        @staticmethod
        @hookimpl
        def register_backends(register: Any) -> None:
            register(OnJoin)

    return Plugin()


async def test_a_backend_that_creates_on_join_refuses_vendor_links_at_start(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        meetings={"default_backend": "onjoin", "allowed_backends": ["onjoin"]},
        backends={"onjoin": {"join_links": "vendor"}},
    )
    with pytest.raises(StartupError, match=r"\[backends.onjoin\] join_links: On Join makes its rooms at the first"):
        async with bridge_client(config, [create_on_join_plugin()]):
            pass


def test_join_links_settings_are_checked(tmp_path: Path) -> None:
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        make_config(
            tmp_path,
            meetings={"join_links": "both", "join_open_hours": 0, "join_misses_per_minute": -1},
            backends={"jitsi": {"join_links": 3}},
        )
    problems = "\n".join(raised.value.problems)
    assert '[meetings] join_links: must be "bridge" or "vendor"' in problems
    assert "[meetings] join_open_hours: must be a positive number of hours" in problems
    assert "[meetings] join_misses_per_minute" in problems
    assert '[backends.jitsi] join_links: must be "bridge" or "vendor", got 3' in problems


# --- the landing page -------------------------------------------------------------------


async def test_the_bridges_address_answers_a_browser_with_what_it_is(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers={"Authorization": ""})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'href="/settings"' in response.text and "Fake Video" in response.text
    assert response.headers["x-frame-options"] == "DENY"
