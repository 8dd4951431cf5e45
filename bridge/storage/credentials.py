"""Scoped credentials: the encrypted secret table seen through one scope, as a backend or a token keeper uses it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from bridge.storage.store import Store


class ScopedCredentials:
    """A ``CredentialStore`` (``bridge.plugin``) over the store, fixed to one scope.

    Leases are named by scope and name, so the same name in two scopes never contends.
    ``count_refresh`` reports token refreshes to the bridge's metrics when given a counter.
    """

    def __init__(self, store: Store, scope: str, on_refresh: Callable[[str], None] | None = None) -> None:
        self._store = store
        self.scope = scope
        self._on_refresh = on_refresh

    async def get(self, name: str) -> str | None:
        return await self._store.get_secret(self.scope, name)

    async def set(self, name: str, value: str) -> None:
        await self._store.put_secret(self.scope, name, value)

    async def delete(self, name: str) -> None:
        await self._store.delete_secret(self.scope, name)

    def lease(self, name: str, seconds: float) -> AbstractAsyncContextManager[None]:
        return self._store.lease(f"{self.scope}/{name}", seconds)

    async def swap(self, name: str, expected: str | None, new: str) -> bool:
        return await self._store.swap_secret(self.scope, name, expected, new)

    def count_refresh(self, outcome: str) -> None:
        if self._on_refresh is not None:
            self._on_refresh(outcome)
