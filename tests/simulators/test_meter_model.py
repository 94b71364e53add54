"""The simulated meter: a plausible load curve whose energy counter is its exact integral."""
from __future__ import annotations

import pytest

from protocols.modbus.codec import decode_block
from protocols.modbus.planner import plan_blocks
from protocols.modbus.profiles import PROFILES, DType, Field, Profile
from simulators.meter_model import (
    DAY_S,
    INSTALL_EPOCH_S,
    UTC_OFFSET_S,
    Fault,
    MeterExceptionResponse,
    SimulatedMeter,
    is_weekend,
)

# 2025-03-03 00:00 MSK, a Monday
MONDAY = 1_740_949_200
assert (MONDAY + UTC_OFFSET_S) % DAY_S == 0 and not is_weekend((MONDAY + UTC_OFFSET_S) // DAY_S)


def _meter(device_id: str = "sdm630-15020-1", profile: str = "sdm630") -> SimulatedMeter:
    return SimulatedMeter(device_id, PROFILES[profile])


def test_counter_is_deterministic_across_instances_and_query_order() -> None:
    a, b = _meter(), _meter()
    t = MONDAY + 12.5 * 3600
    b.energy_since_install_kwh(t + 40 * DAY_S)  # b walks its day cache forward first
    assert a.energy_since_install_kwh(t) == pytest.approx(b.energy_since_install_kwh(t), rel=1e-12)
    assert a.values(t) == b.values(t)
    assert _meter("sdm630-15020-2").values(t) != a.values(t)  # another device, another meter


def test_counter_is_monotonic() -> None:
    m = _meter()
    previous = -1.0
    for step in range(14 * 24 * 4):  # two weeks in 15-minute steps
        e = m.energy_since_install_kwh(MONDAY + step * 900)
        assert e >= previous
        previous = e
    assert m.energy_since_install_kwh(INSTALL_EPOCH_S - 10) == 0.0
    assert m.energy_since_install_kwh(INSTALL_EPOCH_S + 3600) > 0.0


@pytest.mark.parametrize("device_id", [f"wb-map3e-15020-{u}" for u in range(1, 6)])
def test_daily_energy_is_plausible_for_a_small_business(device_id: str) -> None:
    m = _meter(device_id, "wb-map3e")
    week = [
        m.energy_since_install_kwh(MONDAY + (d + 1) * DAY_S) - m.energy_since_install_kwh(MONDAY + d * DAY_S)
        for d in range(7)
    ]
    assert all(10 <= kwh <= 150 for kwh in week), week
    weekday_mean, weekend_mean = sum(week[:5]) / 5, sum(week[5:]) / 2
    assert weekend_mean < weekday_mean


def test_counter_integrates_the_reported_power() -> None:
    m = _meter()
    start = MONDAY + DAY_S  # Tuesday
    riemann_kwh = sum(m.values(start + s)["1-0:16.7.0"] for s in range(30, DAY_S, 60)) * 60 / 3600 / 1000
    counted = m.energy_since_install_kwh(start + DAY_S) - m.energy_since_install_kwh(start)
    assert riemann_kwh == pytest.approx(counted, rel=0.01)  # noise averages out


def test_daily_curve_has_night_base_and_day_peaks() -> None:
    m = _meter()
    at = {h: m.load_fraction(MONDAY + h * 3600) for h in range(24)}
    night = max(at[h] for h in range(5))
    assert at[9] > 3 * night and at[18] > 3 * night  # morning and evening peaks over the base load
    saturday = MONDAY + 5 * DAY_S
    assert m.load_fraction(saturday + 9 * 3600) < at[9]


def test_instantaneous_values_are_consistent() -> None:
    v = _meter().values(MONDAY + 10 * 3600)
    phases = v["1-0:36.7.0"] + v["1-0:56.7.0"] + v["1-0:76.7.0"]
    assert phases == pytest.approx(v["1-0:16.7.0"])
    assert v["1-0:16.7.0"] > 0  # a consumer imports: positive signed active power
    assert v["1-0:131.7.0"] > 0  # inductive load: positive signed reactive power
    assert v["1-0:137.7.0"] ** 2 == pytest.approx(v["1-0:16.7.0"] ** 2 + v["1-0:131.7.0"] ** 2, rel=1e-9)
    assert 0.88 <= v["1-0:13.7.0"] <= 0.995
    for volts in ("1-0:32.7.0", "1-0:52.7.0", "1-0:72.7.0"):
        assert 220 <= v[volts] <= 240
    assert v["1-0:31.7.0"] == pytest.approx(v["1-0:36.7.0"] / (v["1-0:32.7.0"] * v["1-0:13.7.0"]))
    assert v["1-0:21.8.0"] + v["1-0:41.8.0"] + v["1-0:61.8.0"] == pytest.approx(v["1-0:1.8.0"])


def test_the_model_covers_every_quantity_of_every_profile() -> None:
    for name, profile in PROFILES.items():
        assert {f.quantity for f in profile.fields} <= _meter(f"{name}-1-1", name).values(MONDAY).keys(), name


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_register_words_decode_back_to_the_model(profile: str) -> None:
    m = _meter(f"{profile}-1-1", profile)
    t = MONDAY + 8 * 3600
    truth = m.values(t)
    p = PROFILES[profile]
    for block in plan_blocks(p):
        values, missing = decode_block(block, m.read(p.function_code, block.start, block.count, t), p.word_order)
        assert missing == []
        for v in values:
            tolerance = max(p.field_for(v.quantity).scale, abs(truth[v.quantity]) * 1e-6)
            assert v.value == pytest.approx(truth[v.quantity], abs=tolerance), v.quantity


def test_declared_registers_without_a_field_read_zero_and_partial_windows_work() -> None:
    m = _meter()
    t = MONDAY
    full = m.read(4, 0x0000, 80, t)
    assert full[0x12:0x34] == [0] * 0x22  # per-phase VA/VAr/PF/angles: answered, not modelled
    assert m.read(4, 0x0002, 4, t) == full[2:6]  # V L2, V L3 on their own
    assert m.read(4, 0x004E, 2, t) == full[0x4E:0x50]
    wb = _meter("wb-map3e-1-1", "wb-map3e")
    assert wb.read(4, 0x1411, 3, t) == wb.read(4, 0x1410, 4, t)[1:]  # no alignment rule documented for WB
    regs = m.registers(t)
    assert regs[0x0000] == full[0] and 0x0012 not in regs


@pytest.mark.parametrize(
    ("profile", "fc", "start", "count", "code"),
    [
        ("sdm630", 4, 0x0000, 82, 3),  # over the 80-register limit: illegal data value
        ("sdm630", 4, 0x004E, 4, 2),  # 0x0050..0x0051: no register of the map: illegal data address
        ("sdm630", 4, 0x0200, 2, 2),
        ("sdm630", 3, 0x0000, 2, 1),  # holding registers are not the measurement map: illegal function
        ("sdm630", 4, 0x0001, 80, 2),  # the 30001-vs-0 off-by-one: starts inside V L1 (v1.8 §3.11)
        ("sdm630", 4, 0x0000, 3, 2),  # an odd number of registers: ends inside V L2 (v1.8 §1.1)
        ("wb-map3e", 4, 0x0000, 60, 2),  # an SDM630 request sent to a WB-MAP3E
        ("wb-map3e", 4, 0x0000, 80, 3),  # ...which is also over its 60-register limit
        ("wb-map3e", 4, 0x10D9, 7, 2),  # the legacy (fw1) Urms/Irms block is not in the fw2 map
        ("wb-map3e", 4, 0x10BC, 5, 2),  # 0x10C0 follows PF L3: not a register
        ("wb-map3e", 4, 0x1234, 16, 2),  # past RN energy L3 (0x123F)
        ("wb-map3e-fw1", 4, 0x1410, 12, 2),  # the fw2 Urms/Irms block is not in the legacy map
        ("wb-map3e-fw1", 4, 0x10BC, 1, 2),  # nor is fw2's "Total PF"
        ("wb-map3e-fw1", 4, 0x1210, 4, 2),  # nor fw2's AN energy
    ],
)
def test_requests_a_real_meter_refuses(profile: str, fc: int, start: int, count: int, code: int) -> None:
    m = _meter(f"{profile}-1-1", profile)
    with pytest.raises(MeterExceptionResponse) as err:
        m.read(fc, start, count, MONDAY)
    assert err.value.code == code


def test_continuous_read_answers_short_holes_with_the_unsupported_value() -> None:
    # A Wiren Board device in continuous read mode (max_hole > 0) answers holes of up to max_hole
    # registers with 0xFFFE (wb-mqtt-serial README, "unsupported_value"); longer ones get 0x02.
    fields = (Field("1-0:1.8.0", 0, DType.U16), Field("1-0:2.8.0", 6, DType.U16), Field("1-0:3.8.0", 20, DType.U16))
    m = SimulatedMeter("wb-1-1", Profile("wb-test", 4, "big", 60, fields, max_hole=5))
    words = m.read(4, 0, 7, MONDAY)
    assert words[1:6] == [0xFFFE] * 5 and words[0] != 0xFFFE
    with pytest.raises(MeterExceptionResponse) as err:
        m.read(4, 6, 15, MONDAY)  # 7..19 is a 13-register hole
    assert err.value.code == 2


def test_faults() -> None:
    m = _meter()
    t = MONDAY + 12 * 3600
    m.set_fault(Fault.GARBAGE, t)
    assert len(m.read(4, 0, 4, t)) == 5  # a malformed answer: one register too many
    m.set_fault(Fault.EXCEPTION, t, code=4)
    assert (m.fault, m.exception_code) == (Fault.EXCEPTION, 4)
    m.set_fault(Fault.NONE, t)
    before = m.values(t)["1-0:1.8.0"]
    m.set_fault(Fault.RESET, t)
    assert m.fault is Fault.NONE  # a reset happens once
    assert before > 100
    assert m.values(t)["1-0:1.8.0"] == pytest.approx(0.0, abs=1e-9)
    assert m.values(t)["1-0:2.8.0"] == 0.0
    assert 0 < m.values(t + 3600)["1-0:1.8.0"] < 20


def test_no_value_fault_reports_the_vendor_pattern_for_the_chosen_quantities() -> None:
    wb = _meter("wb-map3e-1-1", "wb-map3e")
    t = MONDAY + 12 * 3600
    wb.set_fault(Fault.NO_VALUE, t)  # default: every field with a declared error value: Urms L1..L3
    assert wb.no_value == {"1-0:32.7.0", "1-0:52.7.0", "1-0:72.7.0"}
    assert wb.read(4, 0x1410, 6, t) == [0xFFFF] * 6  # 0x1410..0x1415 Urms u32 error value 0xFFFFFFFF
    wb.set_fault(Fault.NO_VALUE, t, quantities=["1-0:52.7.0"])
    words = wb.read(4, 0x1410, 6, t)
    assert words[2:4] == [0xFFFF, 0xFFFF] and words[0:2] != [0xFFFF, 0xFFFF]
    with pytest.raises(ValueError, match="no value"):
        wb.set_fault(Fault.NO_VALUE, t, quantities=["1-0:16.7.0"])  # P declares no error value
    sdm = _meter()
    sdm.set_fault(Fault.NO_VALUE, t, quantities=["1-0:14.7.0"])
    assert sdm.read(4, 0x0046, 2, t)[0] & 0x7F80 == 0x7F80  # frequency: a NaN float
    sdm.set_fault(Fault.NONE, t)
    assert sdm.no_value == frozenset()


def test_frozen_fault_keeps_answering_the_values_of_the_moment_of_the_fault() -> None:
    m = _meter()
    t = MONDAY + 12 * 3600
    before = m.read(4, 0, 80, t)
    m.set_fault(Fault.FROZEN, t + 0.5)
    assert m.read(4, 0, 80, t + 10) == before  # ten seconds later: the same words, voltage and energy alike
    m.set_fault(Fault.NONE, t + 20)
    assert m.read(4, 0, 80, t + 20) != before
