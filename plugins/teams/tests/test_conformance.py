"""The core's backend contract, once per way of reaching Microsoft Graph, against the fake on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pipedrive_video_bridge_teams import TeamsBackend
from pipedrive_video_bridge_teams.fake_teams import FakeTeamsState

from bridge.plugin import Backend, BackendContext
from bridge.testing import BackendConformance


class IssuedSecrets:
    """The app's client secret and every token the fake handed out, read when iterated (after the kit's calls)."""

    def __init__(self, teams: FakeTeamsState) -> None:
        self.teams = teams

    def __iter__(self) -> Iterator[str]:
        if self.teams.client_secret:
            yield self.teams.client_secret
        with self.teams.lock:
            yield from list(self.teams.issued_secrets)


class TestCompanyAppConformance(BackendConformance):
    @pytest.fixture
    def backend(self, company_backend: Backend) -> Backend:
        return company_backend

    @pytest.fixture
    def context(self, company_context: BackendContext) -> BackendContext:  # type: ignore[override]
        return company_context

    @pytest.fixture
    def vendor_secrets(self, teams: FakeTeamsState) -> IssuedSecrets:  # type: ignore[override]
        return IssuedSecrets(teams)


class TestCertificateConformance(TestCompanyAppConformance):
    """The app proves itself with a certificate's signed assertion instead of a secret."""

    @pytest.fixture
    def backend(self, teams: FakeTeamsState, certificate_file: Path) -> Backend:
        teams.client_secret = None
        config = {**teams.backend_config(), "certificate_file": str(certificate_file)}
        return TeamsBackend.from_config(config)


class TestUserAccountConformance(BackendConformance):
    @pytest.fixture
    def backend(self, user_backend: Backend) -> Backend:
        return user_backend

    @pytest.fixture
    def context(self, user_context: BackendContext) -> BackendContext:  # type: ignore[override]
        return user_context

    @pytest.fixture
    def vendor_secrets(self, teams: FakeTeamsState) -> IssuedSecrets:  # type: ignore[override]
        return IssuedSecrets(teams)
