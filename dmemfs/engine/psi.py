"""Pressure stall information files of a cgroup (kernel/sched/psi.c, kernel/cgroup/cgroup.c).

``cgroup.pressure`` (0/1) shows or hides the ``<resource>.pressure`` files of its cgroup
(``cgroup_pressure_write()``). A pressure file reads as two lines, ``some`` and ``full``
(``psi_show()``); ``irq.pressure`` has only ``full``. Writing ``some|full THRESHOLD WINDOW``
(microseconds) to an open pressure file creates a trigger on that open file
(``psi_trigger_create()``): at most one per open file (EBUSY), the window at most 10 s and,
for an opener without CAP_SYS_RESOURCE, a multiple of 2 s; the threshold non-zero and at most
the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmemfs.engine.parse import KSPACE
from dmemfs.errors import InvalidArgument

#: ``enum psi_res`` order; ``irq`` only on kernels with CONFIG_IRQ_TIME_ACCOUNTING.
RESOURCES = ("io", "memory", "cpu", "irq")
#: ``WINDOW_MAX_US``.
WINDOW_MAX_US = 10_000_000
#: Unprivileged triggers need a window that is a multiple of this (microseconds).
UNPRIVILEGED_WINDOW_US = 2_000_000
_U32 = (1 << 32) - 1


def zero_pressure(resource: str) -> str:
    """A pressure file with no stall recorded (a cgroup whose stalls are not measured)."""
    kinds = ("full",) if resource == "irq" else ("some", "full")
    return "".join(f"{k} avg10=0.00 avg60=0.00 avg300=0.00 total=0\n" for k in kinds)


@dataclass(frozen=True, slots=True)
class PsiTrigger:
    resource: str
    full: bool
    threshold_us: int
    window_us: int


def _scan_uint(s: str) -> tuple[int, str] | None:
    """A ``%u`` of the kernel's ``vsscanf()``: leading white space skipped, decimal digits,
    the value truncated to 32 bits; None if no digit follows."""
    s = s.lstrip(KSPACE)
    n = 0
    while n < len(s) and s[n].isascii() and s[n].isdigit():
        n += 1
    if n == 0:
        return None
    return int(s[:n]) & _U32, s[n:]


def _scan(text: str, word: str) -> tuple[int, int] | None:
    """``sscanf(buf, "<word> %u %u", ...) == 2``: the word must start the buffer; white space
    between the fields may be absent or repeated; anything after the second number is
    ignored."""
    if not text.startswith(word):
        return None
    first = _scan_uint(text[len(word):])
    if first is None:
        return None
    second = _scan_uint(first[1].lstrip(KSPACE))
    if second is None:
        return None
    return first[0], second[0]


def parse_trigger(data: str, resource: str, privileged: bool) -> PsiTrigger:
    """``psi_trigger_create()``'s checks on one write (``data`` up to its first NUL)."""
    text = data.split("\0", 1)[0]
    full = False
    values = _scan(text, "some")
    if values is None:
        values = _scan(text, "full")
        full = values is not None
    if values is None:
        raise InvalidArgument("a trigger is 'some|full THRESHOLD_US WINDOW_US'")
    if resource == "irq" and not full:
        raise InvalidArgument("irq pressure has only 'full' triggers")
    threshold, window = values
    if window == 0 or window > WINDOW_MAX_US:
        raise InvalidArgument(f"window {window} us outside 1..{WINDOW_MAX_US}")
    if not privileged and window % UNPRIVILEGED_WINDOW_US:
        raise InvalidArgument("without CAP_SYS_RESOURCE the window is a multiple of 2 s")
    if threshold == 0 or threshold > window:
        raise InvalidArgument(f"threshold {threshold} us outside 1..{window}")
    return PsiTrigger(resource, full, threshold, window)
