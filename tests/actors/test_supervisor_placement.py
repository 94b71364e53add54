"""The supervisor's placement rule: sticky, balanced, and nothing moves when one connection comes or goes."""
from actors.supervisor import place


def _ids(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def test_a_fresh_start_fills_shards_in_id_order() -> None:
    placed = place({}, _ids(5), [], capacity=2)
    assert placed == {"c000": "modbus-shard-0", "c001": "modbus-shard-0", "c002": "modbus-shard-1",
                      "c003": "modbus-shard-1", "c004": "modbus-shard-2"}


def test_adding_changing_or_removing_one_connection_moves_no_other() -> None:
    before = place({}, _ids(42), [], capacity=7)
    shards = sorted(set(before.values()))
    # one more connection (even one that sorts first)
    after = place(before, [*_ids(42), "a-new"], shards, capacity=7)
    assert {cid: after[cid] for cid in before} == before
    # one removed: the others stay, the freed place is taken by the next newcomer
    gone = place(before, _ids(42)[1:], shards, capacity=7)
    assert gone == {cid: s for cid, s in before.items() if cid != "c000"}
    refill = place(gone, [*_ids(42)[1:], "z-new"], shards, capacity=7)
    assert refill["z-new"] == before["c000"] and {c: refill[c] for c in gone} == gone


def test_new_connections_go_to_the_least_loaded_shard_and_open_a_shard_only_when_all_are_full() -> None:
    before = place({}, _ids(6), [], capacity=3)  # two full shards
    thinned = place(before, ["c000", "c003", "c004", "c005"], ["modbus-shard-0", "modbus-shard-1"], capacity=3)
    after = place(thinned, ["c000", "c003", "c004", "c005", "n1", "n2", "n3"],
                  ["modbus-shard-0", "modbus-shard-1"], capacity=3)
    assert (after["n1"], after["n2"]) == ("modbus-shard-0", "modbus-shard-0")  # the shard with room
    assert after["n3"] == "modbus-shard-2"  # everything else full
    loads = sorted(list(after.values()).count(s) for s in set(after.values()))
    assert loads == [1, 3, 3]


def test_a_shard_is_sized_by_polls_per_second_as_well_as_by_connections() -> None:
    # 40 fast connections (10 meters at 1 s: 10 polls/s each) and 40 slow ones (10 meters at 15 s).
    fast = {f"f{i:02d}": 10.0 for i in range(40)}
    slow = {f"s{i:02d}": 10 / 15 for i in range(40)}
    placed = place({}, {**fast, **slow}, [], capacity=1000, max_polls_per_s=100.0)
    load: dict[str, float] = {}
    for cid, shard in placed.items():
        load[shard] = load.get(shard, 0.0) + {**fast, **slow}[cid]
    assert max(load.values()) <= 100.0  # no shard does more than its share of work
    assert len(load) == 5  # 426.7 polls/s in all: five shards of at most 100, none more than needed
    # One more slow connection fits where there is room and moves nobody.
    after = place(placed, {**fast, **slow, "s99": 10 / 15}, sorted(load), capacity=1000, max_polls_per_s=100.0)
    assert {c: after[c] for c in placed} == placed and after["s99"] in load


def test_a_connection_heavier_than_a_whole_shard_still_gets_one() -> None:
    placed = place({}, {"huge": 5000.0, "small": 1.0}, [], capacity=10, max_polls_per_s=100.0)
    assert placed["huge"] != placed["small"]
