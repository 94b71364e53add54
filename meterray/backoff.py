"""Jittered exponential backoff, capped, so hundreds of failed connections do not retry in step."""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    attempts: int = 0

    def next_delay(self) -> float:
        """Delay before the next attempt: between half and all of min(cap, base·2ⁿ)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempts, 32)))
        self.attempts += 1
        return ceiling * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempts = 0
