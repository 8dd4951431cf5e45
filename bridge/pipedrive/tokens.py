"""Pipedrive token upkeep: each link's tokens refreshed once, however many requests and replicas need them.

The refresh itself is the core's token primitive (``bridge.vendors.tokens.TokenKeeper``):
requests of one process share a refresh, replicas take a short lease instead of
holding a transaction across Pipedrive's token endpoint, the tokens are read again
under it, and written back with compare-and-swap, so a refresh finishing late never
brings back the tokens of an uninstalled or re-installed link. A refresh Pipedrive
rejects with ``invalid_grant`` is recorded in the tokens and marks the link as
needing re-install.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import anyio

from bridge.errors import Gone, ServiceUnavailable
from bridge.metrics import Metrics
from bridge.pipedrive.client import InvalidGrant, PipedriveClient, PipedriveError, TokenSet
from bridge.storage.credentials import ScopedCredentials
from bridge.storage.links import PIPEDRIVE_TOKENS
from bridge.storage.schema import LINK_NEEDS_REINSTALL, utcnow
from bridge.storage.secrets import link_scope
from bridge.storage.store import Store
from bridge.vendors.tokens import Token, TokenKeeper, TokenRefused

log = logging.getLogger(__name__)

NO_TOKENS = "this link has no Pipedrive tokens: the user has to install the app again"
REFUSED = "Pipedrive no longer accepts this installation: the user has to install the app again"


def dump_tokens(tokens: TokenSet) -> str:
    return json.dumps(tokens.to_dict())


def load_tokens(value: str | None) -> TokenSet | None:
    return TokenSet.from_dict(json.loads(value)) if value else None


def _token(tokens: TokenSet) -> Token:
    return Token.load(dump_tokens(tokens))  # type: ignore[return-value]  # the same JSON object


def _token_set(token: Token) -> TokenSet:
    return TokenSet.from_dict(json.loads(token.dump()))


class PipedriveTokens:
    """The Pipedrive tokens of every link, kept fresh (``margin_seconds`` before they expire)."""

    def __init__(
        self, store: Store, client: PipedriveClient, margin_seconds: float, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.client = client
        self.refreshes = 0  # how many refreshes this process made (for tests and metrics)
        self._keeper = TokenKeeper(PIPEDRIVE_TOKENS, margin_seconds=margin_seconds)

    @property
    def margin(self) -> float:
        return self._keeper.margin

    def _credentials(self, link_id: str) -> ScopedCredentials:
        return ScopedCredentials(self.store, link_scope(link_id), self._count)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.labelled(self.metrics.token_refreshes, "pipedrive", outcome).inc()

    async def tokens(self, link_id: str) -> TokenSet | None:
        return load_tokens(await self.store.get_secret(link_scope(link_id), PIPEDRIVE_TOKENS))

    async def fresh_tokens(self, link_id: str, *, stale_access_token: str | None = None) -> TokenSet:
        """Tokens whose access token is valid for at least the margin.

        Pass ``stale_access_token`` after Pipedrive answered 401 with it: that
        token is refreshed even if its expiry says it should still work.
        """

        async def refresh(current: Token | None) -> Token:
            return await self._refresh(link_id, current)

        try:
            token = await self._keeper.token(self._credentials(link_id), refresh, stale=stale_access_token, key=link_id)
        except TokenRefused:
            raise Gone(REFUSED) from None
        return _token_set(token)

    async def _refresh(self, link_id: str, current: Token | None) -> Token:
        if current is None or current.refresh_token is None:
            raise Gone(NO_TOKENS)
        try:
            new = await self.client.refresh(current.refresh_token)
        except InvalidGrant as exc:
            await self.store.set_link_status(link_id, LINK_NEEDS_REINSTALL)
            log.warning("Pipedrive refused the refresh token; the link needs re-install", extra={"link_id": link_id})
            raise TokenRefused(REFUSED) from exc
        except PipedriveError as exc:
            raise ServiceUnavailable(f"Pipedrive tokens could not be refreshed: {exc.message}") from exc
        self.refreshes += 1
        await self.store.touch_link_tokens(link_id)
        log.info("Pipedrive tokens refreshed", extra={"link_id": link_id})
        return _token(new)

    async def refresh_idle(self, idle_days: int) -> int:
        """Refresh links unused for ``idle_days`` so their 60-day refresh tokens never lapse."""
        due = await self.store.links_to_refresh(utcnow() - timedelta(days=idle_days))
        done = 0
        for link_id in due:
            tokens = await self.tokens(link_id)
            if tokens is None:
                continue
            try:
                await self.fresh_tokens(link_id, stale_access_token=tokens.access_token)
                done += 1
            except (Gone, ServiceUnavailable) as exc:
                log.warning("idle link not refreshed", extra={"link_id": link_id, "error": exc.message})
        return done


async def run_upkeep(keeper: PipedriveTokens, idle_days: int, every_seconds: float = 3600.0) -> None:
    """Background loop of the app: refresh idle links once an hour."""
    while True:
        try:
            await keeper.refresh_idle(idle_days)
        except Exception:
            log.exception("token upkeep failed; trying again later")
        await anyio.sleep(every_seconds)
