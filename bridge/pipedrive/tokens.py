"""Pipedrive token upkeep: refresh once per token, across tasks and processes.

A refresh token may only be spent once. Within a process, requests that find
a link's tokens due while a refresh of them is under way wait for it and take
its tokens (``SingleFlight``). The refresh itself runs inside
``Store.locked_secret`` (a PostgreSQL advisory lock or SQLite's write lock
across replicas), where the tokens are read again: if another process
refreshed meanwhile, its tokens are used and Pipedrive is not asked again.
A refresh Pipedrive rejects with ``invalid_grant`` marks the link as needing
re-install.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import timedelta

import anyio

from bridge.errors import Gone, ServiceUnavailable
from bridge.metrics import Metrics
from bridge.pipedrive.client import InvalidGrant, PipedriveClient, PipedriveError, TokenSet
from bridge.storage.schema import LINK_NEEDS_REINSTALL, utcnow
from bridge.storage.links import PIPEDRIVE_TOKENS
from bridge.storage.secrets import link_scope
from bridge.storage.store import Store
from bridge.vendors.singleflight import SingleFlight

log = logging.getLogger(__name__)


def dump_tokens(tokens: TokenSet) -> str:
    return json.dumps(tokens.to_dict())


def load_tokens(value: str | None) -> TokenSet | None:
    return TokenSet.from_dict(json.loads(value)) if value else None


class TokenKeeper:
    def __init__(self, store: Store, client: PipedriveClient, margin_seconds: float,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.client = client
        self.margin = margin_seconds
        self.refreshes = 0  # how many refreshes this process made (for tests and metrics)
        self._refreshing: SingleFlight[TokenSet] = SingleFlight()

    async def tokens(self, link_id: str) -> TokenSet | None:
        return load_tokens(await self.store.get_secret(link_scope(link_id), PIPEDRIVE_TOKENS))

    async def fresh_tokens(self, link_id: str, *, stale_access_token: str | None = None) -> TokenSet:
        """Tokens whose access token is valid for at least the margin.

        Pass ``stale_access_token`` after Pipedrive answered 401 with it: that
        token is refreshed even if its expiry says it should still work.
        """
        tokens = await self.tokens(link_id)
        if tokens is None:
            raise Gone("this link has no Pipedrive tokens: the user has to install the app again")
        if tokens.fresh(self.margin) and tokens.access_token != stale_access_token:
            return tokens
        # keyed by the refused token too: a caller whose token was refused never takes one found still fresh
        return await self._refreshing.run((link_id, stale_access_token),
                                          lambda: self._refresh_locked(link_id, stale_access_token))

    async def _refresh_locked(self, link_id: str, stale_access_token: str | None) -> TokenSet:
        invalid = False
        async with self.store.locked_secret(link_scope(link_id), PIPEDRIVE_TOKENS) as locked:
            current = load_tokens(locked.value)
            if current is None:
                raise Gone("this link has no Pipedrive tokens: the user has to install the app again")
            if current.fresh(self.margin) and current.access_token != stale_access_token:
                return current  # another task or replica refreshed meanwhile
            if current.refused:
                # Pipedrive already refused this refresh token (for an earlier caller): don't ask again
                raise Gone("Pipedrive no longer accepts this installation: the user has to install the app again")
            try:
                new = await self.client.refresh(current.refresh_token)
            except InvalidGrant:
                invalid = True
                self._count("invalid_grant")
                # recorded in the same locked write, so every later caller, here or on another replica, sees it
                locked.replace(dump_tokens(replace(current, refused=True)))
            except PipedriveError as exc:
                self._count("error")
                raise ServiceUnavailable(f"Pipedrive tokens could not be refreshed: {exc.message}") from exc
            else:
                self.refreshes += 1
                self._count("ok")
                locked.replace(dump_tokens(new))
        if invalid:
            await self.store.set_link_status(link_id, LINK_NEEDS_REINSTALL)
            log.warning("Pipedrive refused the refresh token; the link needs re-install", extra={"link_id": link_id})
            raise Gone("Pipedrive no longer accepts this installation: the user has to install the app again")
        await self.store.touch_link_tokens(link_id)
        log.info("Pipedrive tokens refreshed", extra={"link_id": link_id})
        return new

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.token_refreshes.labels("pipedrive", outcome).inc()

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


async def run_upkeep(keeper: TokenKeeper, idle_days: int, every_seconds: float = 3600.0) -> None:
    """Background loop of the app: refresh idle links once an hour."""
    while True:
        try:
            await keeper.refresh_idle(idle_days)
        except Exception:
            log.exception("token upkeep failed; trying again later")
        await anyio.sleep(every_seconds)


def seconds_until(tokens: TokenSet) -> float:
    return tokens.expires_at - time.time()
