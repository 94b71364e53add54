"""The knee search picks the right knee from given probe outcomes (pure rules, no timing)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.knee import KneePlan, held, knee, next_probe


def search(plan: KneePlan, holds: Callable[[int], bool]) -> tuple[int, list[int]]:
    """Run the search against a machine whose outcome per meter count is `holds`."""
    results: dict[int, bool] = {}
    while (n := next_probe(plan, results)) is not None:
        assert n not in results, f"probed {n} twice"
        results[n] = holds(n)
    return knee(results), list(results)


def test_doubles_then_bisects_to_the_step() -> None:
    found, probes = search(KneePlan(start=1000, step=250, maximum=16000, granule=10), lambda n: n <= 5230)
    assert probes[:4] == [1000, 2000, 4000, 8000]  # doubling until the first failure
    assert 5230 - 250 < found <= 5230  # the largest held count, within the step of the true knee
    assert found % 10 == 0
    assert len(probes) <= 9


def test_everything_holds_up_to_the_maximum() -> None:
    found, probes = search(KneePlan(start=1000, step=250, maximum=5000, granule=10), lambda n: True)
    assert found == 5000
    assert probes == [1000, 2000, 4000, 5000]


def test_start_fails_so_the_search_halves_downwards() -> None:
    found, probes = search(KneePlan(start=1000, step=100, maximum=16000, granule=10), lambda n: n <= 180)
    assert probes[:4] == [1000, 500, 250, 120]
    assert 80 < found <= 180


def test_nothing_holds_gives_zero() -> None:
    found, _ = search(KneePlan(start=100, step=10, maximum=1000, granule=10), lambda n: False)
    assert found == 0


def test_a_noisy_hold_above_a_failure_is_ignored() -> None:
    # 3000 failed, yet 4000 held on a quieter moment: the knee stays below the smallest failure.
    assert knee({1000: True, 2000: True, 3000: False, 4000: True}) == 2000
    assert next_probe(KneePlan(1000, 250, 16000, 10), {1000: True, 2000: True, 3000: False, 4000: True}) == 2500


def test_hold_rule_is_95_percent_of_target() -> None:
    assert held(950.0, 1000.0) and not held(949.9, 1000.0) and not held(0.0, 0.0)


def test_plan_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError):
        KneePlan(start=1000, step=5, maximum=16000, granule=10)
    with pytest.raises(ValueError):
        KneePlan(start=20000, step=250, maximum=16000, granule=10)
