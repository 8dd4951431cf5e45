"""The core's backend contract, once per way of reaching Google, against the fake Google on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipedrive_video_bridge_google_meet.fake_google import FakeGoogleState

from bridge.plugin import Backend, BackendContext
from bridge.testing import BackendConformance


class IssuedSecrets:
    """The OAuth client secret, the service accounts' private keys and every token the fake handed out,
    read when iterated (the kit iterates ``vendor_secrets`` after its calls)."""

    def __init__(self, google: FakeGoogleState) -> None:
        self.google = google

    def __iter__(self) -> Iterator[str]:
        yield self.google.client_secret
        with self.google.lock:
            for account in self.google.service_accounts.values():
                yield from (line for line in account.private_pem.splitlines() if "PRIVATE KEY" not in line)
            yield from list(self.google.issued_secrets)


class TestServiceAccountConformance(BackendConformance):
    @pytest.fixture
    def backend(self, company_backend: Backend) -> Backend:
        return company_backend

    @pytest.fixture
    def context(self, company_context: BackendContext) -> BackendContext:  # type: ignore[override]
        return company_context

    @pytest.fixture
    def vendor_secrets(self, google: FakeGoogleState) -> IssuedSecrets:  # type: ignore[override]
        return IssuedSecrets(google)


class TestUserOAuthConformance(BackendConformance):
    @pytest.fixture
    def backend(self, user_backend: Backend) -> Backend:
        return user_backend

    @pytest.fixture
    def context(self, user_context: BackendContext) -> BackendContext:  # type: ignore[override]
        return user_context

    @pytest.fixture
    def vendor_secrets(self, google: FakeGoogleState) -> IssuedSecrets:  # type: ignore[override]
        return IssuedSecrets(google)


class TestPendingConferenceConformance(TestServiceAccountConformance):
    """Google answers the insert before the Meet conference is ready: the backend reads it again."""

    @pytest.fixture
    def backend(self, company_backend: Backend, google: FakeGoogleState) -> Backend:
        google.pending_reads = 1
        return company_backend
