"""Numbers for the live view: rates in bits or bytes a second, sizes in
bytes, scaled by powers of 1000 (SI: KB, Mbps) or 1024 (IEC: KiB, Mib/s).

Three significant digits, so that a rate fits ten cells and a size nine
whatever its magnitude, and the columns of successive screens line up.
"""

from __future__ import annotations

from dataclasses import dataclass

_SI_PREFIXES = ("", "K", "M", "G", "T", "P", "E")
_IEC_PREFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


@dataclass(frozen=True)
class Units:
    """How numbers are shown: ``bits`` or ``bytes`` for rates, SI or IEC prefixes."""

    rate: str = "bits"  # "bits" or "bytes"
    iec: bool = False

    @property
    def label(self) -> str:
        return f"{self.rate} {'IEC' if self.iec else 'SI'}"


# The order the u key steps through.
CYCLE = (Units("bits", False), Units("bytes", False), Units("bits", True), Units("bytes", True))


def next_units(current: Units) -> Units:
    return CYCLE[(CYCLE.index(current) + 1) % len(CYCLE)] if current in CYCLE else CYCLE[0]


def _scaled(value: float, iec: bool) -> tuple[str, str]:
    """``value`` as (number, prefix): three significant digits at most."""
    base = 1024.0 if iec else 1000.0
    prefixes = _IEC_PREFIXES if iec else _SI_PREFIXES
    value = max(0.0, float(value))
    index = 0
    while index < len(prefixes) - 1 and round(value, _decimals(value)) >= base:
        value /= base
        index += 1
    if index == 0:
        return f"{value:.0f}", ""  # whole bytes and bits
    return f"{value:.{_decimals(value)}f}", prefixes[index]


def _decimals(value: float) -> int:
    # 1.23, 12.3, 123 (and 1023 for IEC: below the next prefix).
    if round(value, 2) < 10:
        return 2
    if round(value, 1) < 100:
        return 1
    return 0


def size(nbytes: float, units: Units) -> str:
    """1234567 -> "1.23 MB" (SI) or "1.18 MiB" (IEC)."""
    number, prefix = _scaled(nbytes, units.iec)
    return f"{number} {prefix}B"


def rate(bytes_per_s: float, units: Units) -> str:
    """A rate in bytes a second as "9.87 Mbps" (bits, SI), "1.23 MB/s" (bytes, SI),
    "9.41 Mib/s" (bits, IEC) or "1.18 MiB/s" (bytes, IEC)."""
    if units.rate == "bytes":
        number, prefix = _scaled(bytes_per_s, units.iec)
        return f"{number} {prefix}B/s"
    number, prefix = _scaled(bytes_per_s * 8, units.iec)
    return f"{number} {prefix}b/s" if units.iec else f"{number} {prefix}bps"
