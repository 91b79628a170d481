"""Access control (pure). Placeholder: the verdicts are added in the next step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Buckets:
    """Token buckets keyed by sender (pure: the time is passed in).

    Each bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second;
    :meth:`take` returns 0.0 when a token was taken, else the seconds until one is there.
    Buckets that have refilled completely are forgotten by :meth:`prune`.
    """

    levels: dict[str, tuple[float, float]]

    def __init__(self) -> None:
        self.levels = {}

    def take(self, key: str, *, rate: float, burst: float, now: float) -> float:
        tokens, stamp = self.levels.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
        if tokens >= 1.0:
            self.levels[key] = (tokens - 1.0, now)
            return 0.0
        self.levels[key] = (tokens, now)
        return (1.0 - tokens) / rate if rate > 0 else float("inf")

    def prune(self, *, rate: float, burst: float, now: float) -> None:
        full = [k for k, (t, s) in self.levels.items() if t + (now - s) * rate >= burst]
        for key in full:
            del self.levels[key]
