"""The one shared vocabulary of metered quantities, keyed by OBIS code (IEC 62056-61, `1-0:C.D.E`).

A *cumulative* quantity is a running register (energy): it only grows, except on rollover or
replacement. An *instantaneous* one (power, voltage) may go anywhere.

Signs and OBIS value group C (DLMS UA Blue Book, "Value group C codes – Electricity"; the same
table in IEC 62056-6-1). The Blue Book names power by quadrant, and most of its codes are
*directional magnitudes*, never negative:

| C (Σ / L1 / L2 / L3) | Blue Book meaning                              | sign                     |
|----------------------|------------------------------------------------|--------------------------|
| 1 / 21 / 41 / 61     | active power+ (QI+QIV), import                 | ≥ 0                      |
| 2 / 22 / 42 / 62     | active power− (QII+QIII), export               | ≥ 0                      |
| 16 / 36 / 56 / 76    | active power abs(QI+QIV) − abs(QII+QIII)       | signed: + import, − export |
| 3 / 23 / 43 / 63     | reactive power+ (QI+QII)                       | ≥ 0                      |
| 4 / 24 / 44 / 64     | reactive power− (QIII+QIV)                     | ≥ 0                      |
| 9 / 29 / 49 / 69     | apparent power+ (QI+QIV), while importing      | ≥ 0                      |
| 10 / 30 / 50 / 70    | apparent power− (QII+QIII), while exporting    | ≥ 0                      |
| 13 / 33 / 53 / 73    | power factor                                   | signed (meter's convention) |

Modbus meters report one *signed* register per power (Eastron SDM630 float32 P/Q, Wiren Board
WB-MAP3E s32 P/Q/S): a value that changes sign when the flow reverses. Active power has a
standard signed code, 16.7.0 (36/56/76.7.0 per phase), and that is what every profile produces.
Filing a signed register under 1.7.0 would say "import" for a number that is negative while a
site exports; 1.7.0/21.7.0.. stay in the vocabulary for sources that report import-only power.

Reactive and apparent power have no signed (all-quadrant) code in the Blue Book: there only the
directional pairs 3/4 and 9/10 exist. Splitting one register into two directional quantities
would double the rows for no information and invent a 0 for the other direction, so meterray uses
the Blue Book's manufacturer-specific range of value group C (DLMS UA object list Object_defs:
"in group C the range 128...199 and 240 ... is available for manufacturer specific purposes")
with one rule:
**C = 128 + the Blue Book code of the "+" quantity** means the same quantity over all four
quadrants, as the meter reports it:

| code (Σ; L1 / L2 / L3)              | meaning                                                  |
|-------------------------------------|----------------------------------------------------------|
| 1-0:131.7.0; 151 / 171 / 191.7.0    | reactive power, all quadrants, signed: + inductive       |
|                                     | (QI+QII), − capacitive (QIII+QIV); = 3.7.0 − 4.7.0       |
| 1-0:137.7.0; 157 / 177 / 197.7.0    | apparent power, all quadrants (import and export);       |
|                                     | = 9.7.0 + 10.7.0                                         |

Apparent power is a magnitude (Urms·Irms) on the SDM630; WB-MAP3E declares its S registers s32
(config-map3e-fw2.json) and we pass its value through unchanged, sign included, under 137.7.0.
Energy registers need no such care: meters count import and export in separate, never-negative
registers (1.8.0 / 2.8.0, 3.8.0 / 4.8.0), which is how both profiles report them.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    CUMULATIVE = "cumulative"
    INSTANTANEOUS = "instantaneous"


@dataclass(frozen=True, slots=True)
class Quantity:
    obis: str
    name: str
    unit: str
    kind: Kind

    @property
    def cumulative(self) -> bool:
        return self.kind is Kind.CUMULATIVE


_C, _I = Kind.CUMULATIVE, Kind.INSTANTANEOUS

QUANTITIES: dict[str, Quantity] = {
    q.obis: q
    for q in (
        Quantity("1-0:1.8.0", "active energy import A+", "kWh", _C),
        Quantity("1-0:2.8.0", "active energy export A-", "kWh", _C),
        Quantity("1-0:3.8.0", "reactive energy import R+", "kvarh", _C),
        Quantity("1-0:4.8.0", "reactive energy export R-", "kvarh", _C),
        Quantity("1-0:21.8.0", "active energy import L1", "kWh", _C),
        Quantity("1-0:41.8.0", "active energy import L2", "kWh", _C),
        Quantity("1-0:61.8.0", "active energy import L3", "kWh", _C),
        # Signed active power (import +, export −): what Modbus meters report.
        Quantity("1-0:16.7.0", "active power total, signed (import +, export -)", "W", _I),
        Quantity("1-0:36.7.0", "active power L1, signed (import +, export -)", "W", _I),
        Quantity("1-0:56.7.0", "active power L2, signed (import +, export -)", "W", _I),
        Quantity("1-0:76.7.0", "active power L3, signed (import +, export -)", "W", _I),
        # Import-only active power (>= 0), for sources that report it that way (DLMS, DSMR).
        Quantity("1-0:1.7.0", "active power import total (>= 0)", "W", _I),
        Quantity("1-0:21.7.0", "active power import L1 (>= 0)", "W", _I),
        Quantity("1-0:41.7.0", "active power import L2 (>= 0)", "W", _I),
        Quantity("1-0:61.7.0", "active power import L3 (>= 0)", "W", _I),
        # All-quadrant reactive and apparent power: manufacturer-specific C = 128 + C of the "+" code.
        Quantity("1-0:131.7.0", "reactive power total, signed (inductive +, capacitive -)", "var", _I),
        Quantity("1-0:151.7.0", "reactive power L1, signed (inductive +, capacitive -)", "var", _I),
        Quantity("1-0:171.7.0", "reactive power L2, signed (inductive +, capacitive -)", "var", _I),
        Quantity("1-0:191.7.0", "reactive power L3, signed (inductive +, capacitive -)", "var", _I),
        Quantity("1-0:137.7.0", "apparent power total, all quadrants", "VA", _I),
        Quantity("1-0:157.7.0", "apparent power L1, all quadrants", "VA", _I),
        Quantity("1-0:177.7.0", "apparent power L2, all quadrants", "VA", _I),
        Quantity("1-0:197.7.0", "apparent power L3, all quadrants", "VA", _I),
        Quantity("1-0:32.7.0", "voltage L1", "V", _I),
        Quantity("1-0:52.7.0", "voltage L2", "V", _I),
        Quantity("1-0:72.7.0", "voltage L3", "V", _I),
        Quantity("1-0:31.7.0", "current L1", "A", _I),
        Quantity("1-0:51.7.0", "current L2", "A", _I),
        Quantity("1-0:71.7.0", "current L3", "A", _I),
        Quantity("1-0:13.7.0", "power factor total", "", _I),
        Quantity("1-0:14.7.0", "frequency", "Hz", _I),
    )
}


def quantity(obis: str) -> Quantity:
    """Look up a quantity; raises KeyError with the code when it is not in the vocabulary."""
    try:
        return QUANTITIES[obis]
    except KeyError:
        raise KeyError(f"unknown OBIS code {obis!r}; add it to meterray.quantities.QUANTITIES") from None
