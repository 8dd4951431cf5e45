"""Key rotation: which key ids the stored secrets use, a start-up check that the keys can read them, re-encryption."""

from __future__ import annotations

from sqlalchemy import func, select, update

from bridge.storage.schema import SECRETS
from bridge.storage.secrets import secret_context
from bridge.storage.transactions import Database, in_thread, writes


class KeyRotation(Database):
    """Secrets moved to the vault's primary key in small transactions, while the bridge keeps running."""

    @in_thread
    def unknown_key_ids(self) -> list[str]:
        """Key ids found in the database that the vault cannot decrypt with."""
        vault = self._require_vault()
        with self._transaction() as conn:
            kids = conn.execute(select(SECRETS.c.key_id).distinct()).scalars().all()
        return sorted(kid for kid in kids if not vault.knows(kid))

    @in_thread
    def verify_one_secret(self) -> None:
        """Decrypt one stored secret per key id, so a wrong key fails at start-up, not later."""
        vault = self._require_vault()
        with self._transaction() as conn:
            for kid in conn.execute(select(SECRETS.c.key_id).distinct()).scalars().all():
                row = conn.execute(select(SECRETS).where(SECRETS.c.key_id == kid).limit(1)).one()
                vault.decrypt(row.ciphertext, secret_context(row.scope, row.name))

    @writes
    def rotate_batch(self, batch_size: int = 200) -> int:
        """Re-encrypt up to ``batch_size`` rows not on the primary key; returns how many moved.

        Each row is rewritten only if it is unchanged since it was read (its version),
        so a token refreshed meanwhile by a running replica is never overwritten.
        """
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            rows = conn.execute(select(SECRETS).where(SECRETS.c.key_id != vault.primary_key_id).limit(batch_size)).all()
            moved = 0
            for row in rows:
                context = secret_context(row.scope, row.name)
                kid, ciphertext = vault.encrypt(vault.decrypt(row.ciphertext, context), context)
                result = conn.execute(
                    update(SECRETS)
                    .where(SECRETS.c.scope == row.scope, SECRETS.c.name == row.name, SECRETS.c.version == row.version)
                    .values(key_id=kid, ciphertext=ciphertext, version=row.version + 1)
                )
                moved += result.rowcount
            return moved

    async def rotate(self, batch_size: int = 200) -> int:
        """Re-encrypt every secret with the primary key, in small transactions."""
        primary = self._require_vault().primary_key_id
        total = 0
        while True:
            total += await self.rotate_batch(batch_size)
            # a batch whose rows were all rewritten meanwhile moves none: stop when none is left
            if set(await self.count_by_key()) <= {primary}:
                return total

    @in_thread
    def count_by_key(self) -> dict[str, int]:
        with self._transaction() as conn:
            rows = conn.execute(select(SECRETS.c.key_id, func.count()).group_by(SECRETS.c.key_id)).all()
        return {kid: count for kid, count in rows}
