"""The store: the one object the bridge holds for every read and write, composed from the storage modules.

``Store`` is a class of mixins, one per thing stored, all built on
``transactions.Database`` (the engine, the vault, the worker threads):

- ``links.Links``: links, installs and uninstalls;
- ``meetings.Meetings``: meetings and their encrypted rooms;
- ``outbox.Outbox``: the jobs of vendor work that must finish;
- ``secrets.Secrets``: secrets by scope, compare-and-swap, leases;
- ``rotation.KeyRotation``: key ids in use and re-encryption.

Mixins rather than delegation, so ``bridge.store.get_link(...)`` stays one call
with no forwarding layer, and each mixin sees only the shared ``Database``; what
one part needs of another (a link's tokens, a meeting's room) it gets from the
connection-level functions of ``secrets``, inside its own transaction.
SQLite by file (the default) or PostgreSQL by URL; ``make_engine`` opens either.
"""

from __future__ import annotations

from bridge.storage.links import Links
from bridge.storage.meetings import Meetings
from bridge.storage.outbox import Outbox
from bridge.storage.rotation import KeyRotation
from bridge.storage.secrets import Secrets
from bridge.storage.transactions import StoreError, make_engine

__all__ = ["Store", "StoreError", "make_engine"]


class Store(Links, Meetings, Outbox, Secrets, KeyRotation):
    """Every read and write of the bridge, as coroutines over a blocking engine (SQLAlchemy Core)."""
