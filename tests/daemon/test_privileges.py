"""The capability check reads CapEff and CapBnd as /proc/PID/status shows them."""

from __future__ import annotations

import pytest

from fnd.daemon.sandbox.privileges import missing_capabilities

pytestmark = pytest.mark.unit

_ALL = "000001ffffffffff"


def _status(eff: str, bnd: str) -> str:
    return (f"Name:\tfnd\nCapInh:\t0000000000000000\nCapPrm:\t{eff}\nCapEff:\t{eff}\n"
            f"CapBnd:\t{bnd}\n")


def test_all_present_is_nothing_missing() -> None:
    assert missing_capabilities(_status(_ALL, _ALL)) == []


def test_container_set_is_enough() -> None:
    # SETUID SETGID KILL CHOWN DAC_OVERRIDE FOWNER: bits 7 6 5 0 1 3
    mask = f"{(1 << 7) | (1 << 6) | (1 << 5) | 1 | (1 << 1) | (1 << 3):016x}"
    assert missing_capabilities(_status(mask, mask)) == []


def test_missing_kill_is_named_alone() -> None:
    without_kill = f"{0x1ffffffffff & ~(1 << 5):016x}"
    missing = missing_capabilities(_status(without_kill, _ALL))
    assert len(missing) == 1 and missing[0].startswith("CAP_KILL (")


def test_effective_but_not_in_bounding_set_is_missing() -> None:
    without_setuid = f"{0x1ffffffffff & ~(1 << 7):016x}"
    assert [m.split()[0] for m in missing_capabilities(_status(_ALL, without_setuid))] == [
        "CAP_SETUID"]
