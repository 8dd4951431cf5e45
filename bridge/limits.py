"""Per-client limits kept in this process's memory: how many unknown join links one client may try."""

from __future__ import annotations

from collections import OrderedDict

WINDOW_SECONDS = 60.0


class MissLimiter:
    """At most ``per_minute`` misses per client in a fixed one-minute window.

    Past the limit every attempt from that client is refused until its window ends,
    found or not, so a guesser learns nothing from a lucky guess either. At most
    ``max_clients`` windows are kept (the oldest are forgotten first), so a flood
    of addresses costs bounded memory.
    """

    def __init__(self, per_minute: int, *, max_clients: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def wait(self, client: str, now: float) -> float:
        """Seconds until ``client`` may try again (0: it may now)."""
        window = self._windows.get(client)
        if window is None or now - window[0] >= WINDOW_SECONDS:
            return 0.0
        start, misses = window
        return max(0.0, start + WINDOW_SECONDS - now) if misses >= self.per_minute else 0.0

    def miss(self, client: str, now: float) -> None:
        start, misses = self._windows.pop(client, (now, 0))
        if now - start >= WINDOW_SECONDS:
            start, misses = now, 0
        self._windows[client] = (start, misses + 1)
        while len(self._windows) > self.max_clients:
            self._windows.popitem(last=False)
