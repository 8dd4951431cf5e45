"""The core's backend contract, once per way of reaching Zoom, against the fake Zoom on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState

from bridge.plugin import Backend, BackendContext
from bridge.testing import BackendConformance


class IssuedSecrets:
    """The app's client secret and every token and host key the fake handed out, read when iterated.

    The kit iterates ``vendor_secrets`` after its calls, so what was issued during the test is checked too.
    """

    def __init__(self, zoom: FakeZoomState) -> None:
        self.zoom = zoom

    def __iter__(self) -> Iterator[str]:
        yield self.zoom.client_secret
        with self.zoom.lock:
            yield from list(self.zoom.issued_secrets)


class TestServerToServerConformance(BackendConformance):
    @pytest.fixture
    def backend(self, account_backend: Backend) -> Backend:
        return account_backend

    @pytest.fixture
    def context(self, account_context: BackendContext) -> BackendContext:  # type: ignore[override]
        return account_context

    @pytest.fixture
    def vendor_secrets(self, zoom: FakeZoomState) -> IssuedSecrets:  # type: ignore[override]
        return IssuedSecrets(zoom)


class TestUserOAuthConformance(BackendConformance):
    @pytest.fixture
    def backend(self, user_backend: Backend) -> Backend:
        return user_backend

    @pytest.fixture
    def context(self, user_context: BackendContext) -> BackendContext:  # type: ignore[override]
        return user_context

    @pytest.fixture
    def vendor_secrets(self, zoom: FakeZoomState) -> IssuedSecrets:  # type: ignore[override]
        return IssuedSecrets(zoom)


class TestWithoutTheInvitationScopeConformance(TestServerToServerConformance):
    """The app lacks the invitation scope: the bridge writes the invitation itself."""

    @pytest.fixture
    def backend(self, account_backend: Backend, zoom: FakeZoomState) -> Backend:
        zoom.invitation_scope = False
        return account_backend
