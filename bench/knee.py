"""The knee search of `meterray bench modbus --find-knee`: pure rules, no timing, no I/O.

The knee is the largest meter count that held (kept >= 95 % of its target polls/s) below the
smallest count that did not. The search doubles from a start count until a probe fails (or the
maximum is reached), then bisects between the largest held and the smallest failed count until
they are at most `step` apart. Every probe is a whole number of `granule`s (the meters behind one
simulator port), so a probe never polls a half-filled gateway.

A noisy machine can make a larger count hold after a smaller one failed; such a probe is kept
in the record but ignored: the knee is only ever taken below the smallest failure.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

HOLD_FRACTION = 0.95  # a probe holds when it keeps this share of its target


@dataclass(frozen=True, slots=True)
class KneePlan:
    start: int
    step: int
    maximum: int
    granule: int = 1

    def __post_init__(self) -> None:
        if self.granule < 1 or self.step < self.granule:
            raise ValueError(f"need 1 <= granule <= step, got granule {self.granule}, step {self.step}")
        if not self.granule <= self.start <= self.maximum:
            raise ValueError(f"need granule <= start <= maximum, got {self.start}, {self.maximum}")

    def _round(self, meters: float) -> int:
        return max(self.granule, int(meters) // self.granule * self.granule)


def held(achieved: float, target: float, fraction: float = HOLD_FRACTION) -> bool:
    return target > 0 and achieved >= fraction * target


def bounds(results: Mapping[int, bool]) -> tuple[int, int | None]:
    """(largest held count below the smallest failure or 0, smallest failed count or None)."""
    failed = min((m for m, ok in results.items() if not ok), default=None)
    below = [m for m, ok in results.items() if ok and (failed is None or m < failed)]
    return max(below, default=0), failed


def knee(results: Mapping[int, bool]) -> int:
    """The largest meter count that held below the smallest one that failed (0: none held)."""
    return bounds(results)[0]


def next_probe(plan: KneePlan, results: Mapping[int, bool]) -> int | None:
    """The next meter count to probe, or None when the knee is known to `plan.step`."""
    if not results:
        return plan._round(plan.start)
    lo, hi = bounds(results)
    if hi is None:  # everything held so far: double, up to the maximum
        cap = plan._round(plan.maximum)
        return None if lo >= cap else min(plan._round(2 * lo), cap)
    if lo == 0:  # the smallest probe failed: halve downwards
        if hi <= plan.granule:
            return None
        down = plan._round(hi / 2)
        return down if down < hi and down not in results else None
    if hi - lo <= plan.step:
        return None
    mid = plan._round((lo + hi) / 2)
    if not lo < mid < hi or mid in results:
        return None  # the granule is too coarse to split further
    return mid
