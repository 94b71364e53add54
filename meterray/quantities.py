"""The one shared vocabulary of metered quantities, keyed by OBIS code (IEC 62056-61, `1-0:C.D.E`).

A *cumulative* quantity is a running register (energy): it only grows, except on rollover or
replacement. An *instantaneous* one (power, voltage) may go anywhere.
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
        Quantity("1-0:1.7.0", "active power total", "W", _I),
        Quantity("1-0:21.7.0", "active power L1", "W", _I),
        Quantity("1-0:41.7.0", "active power L2", "W", _I),
        Quantity("1-0:61.7.0", "active power L3", "W", _I),
        Quantity("1-0:3.7.0", "reactive power total", "var", _I),
        Quantity("1-0:9.7.0", "apparent power total", "VA", _I),
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
