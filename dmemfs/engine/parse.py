"""Pure parsers and formatters with the kernel's rules and errnos.

All functions take ``str`` decoded from the written bytes as latin-1 (one character per
byte, so nothing is lost) and raise :mod:`dmemfs.errors` exceptions.
"""

from __future__ import annotations

from dmemfs.errors import InvalidArgument, OutOfRange
from dmemfs.profile import INT_MAX, PAGE_COUNTER_MAX, U64_MASK

#: ``isspace()`` of the kernel's ``lib/ctype.c``: ASCII white space plus 0xA0.
KSPACE = " \t\n\v\f\r\xa0"

_SUFFIX_SHIFT = {c: 10 * (i + 1) for i, c in enumerate("KMGTPE")}


def strstrip(s: str) -> str:
    """The kernel's ``strstrip()``."""
    return s.strip(KSPACE)


def _digit(c: str) -> int:
    """The value of an ASCII digit or letter (``_tolower`` + ``isdigit``), else 99."""
    if "0" <= c <= "9":
        return ord(c) - 48
    if "a" <= c <= "z":
        return ord(c) - 87
    if "A" <= c <= "Z":
        return ord(c) - 55
    return 99


def _fixup_radix(s: str, base: int) -> tuple[str, int]:
    """``_parse_integer_fixup_radix()``: base 0 picks 16 (``0x`` + hex digit), 8 or 10."""
    if base == 0:
        if s.startswith("0"):
            base = 16 if (len(s) > 2 and s[1] in "xX" and _digit(s[2]) < 16) else 8
        else:
            base = 10
    if base == 16 and len(s) >= 2 and s[0] == "0" and s[1] in "xX":
        s = s[2:]
    return s, base


def _parse_digits(s: str, base: int) -> tuple[int, int, bool]:
    """``_parse_integer``: leading ASCII digits of ``base``; returns (value mod 2^64, digits
    used, overflowed). Linear in the length: the value never grows past 64 bits."""
    value = 0
    n = 0
    overflow = False
    for c in s:
        d = _digit(c)
        if d >= base:
            break
        value = value * base + d
        if value > U64_MASK:
            overflow = True
            value &= U64_MASK
        n += 1
    return value, n, overflow


def simple_strtoull(s: str, base: int = 0) -> tuple[int, str]:
    """``simple_strtoull()``: value (wrapping mod 2^64) and the unparsed rest."""
    s, base = _fixup_radix(s, base)
    value, n, _ = _parse_digits(s, base)
    return value, s[n:]


def memparse(s: str) -> tuple[int, str]:
    """``memparse()``: a number with an optional binary suffix; returns (value, rest)."""
    value, rest = simple_strtoull(s, 0)
    if rest and rest[0].upper() in _SUFFIX_SHIFT:
        value = (value << _SUFFIX_SHIFT[rest[0].upper()]) & U64_MASK
        rest = rest[1:]
    return value, rest


def parse_limit(s: str) -> int:
    """A dmem limit value: exactly ``max`` or a memparse value with nothing left over."""
    if s == "max":
        return PAGE_COUNTER_MAX
    value, rest = memparse(s)
    if rest:
        raise InvalidArgument(f"invalid value {s!r}")
    return value


def format_counter(value: int) -> str:
    """A page-counter value as dmem prints it: ``max`` at or above PAGE_COUNTER_MAX."""
    return "max" if value >= PAGE_COUNTER_MAX else str(value)


def _kstrtoull(s: str, base: int) -> int:
    """``_kstrtoull()``: digits, then at most one newline; no sign."""
    s, base = _fixup_radix(s, base)
    value, n, overflow = _parse_digits(s, base)
    if n == 0:
        raise InvalidArgument(f"not a number: {s!r}")
    if overflow:
        raise OutOfRange(f"number out of range: {s!r}")
    rest = s[n:]
    if rest.startswith("\n"):
        rest = rest[1:]
    if rest:
        raise InvalidArgument(f"trailing characters: {rest!r}")
    return value


def kstrtou64(s: str, base: int = 0) -> int:
    """``kstrtou64()``: an optional ``+``, digits, at most one newline."""
    return _kstrtoull(s[1:] if s.startswith("+") else s, base)


def kstrtoint(s: str, base: int = 0) -> int:
    """``kstrtoint()``: EINVAL for garbage, ERANGE when the value does not fit an int."""
    if s.startswith("-"):
        v = -_kstrtoull(s[1:], base)
    else:
        v = _kstrtoull(s[1:] if s.startswith("+") else s, base)
    if v > INT_MAX or v < -INT_MAX - 1:
        raise OutOfRange(f"number out of range: {s!r}")
    return v


def parse_max_int(s: str) -> int:
    """``cgroup.max.depth``/``cgroup.max.descendants``: ``max`` or an int >= 0."""
    s = strstrip(s)
    if s == "max":
        return INT_MAX
    v = kstrtoint(s, 0)
    if v < 0:
        raise OutOfRange(f"negative value: {s!r}")
    return v


def format_max_int(v: int) -> str:
    return "max\n" if v >= INT_MAX else f"{v}\n"


def parse_bool01(s: str) -> int:
    """``cgroup.freeze``: an int that must be 0 or 1 (ERANGE otherwise)."""
    v = kstrtoint(strstrip(s), 0)
    if v not in (0, 1):
        raise OutOfRange(f"value must be 0 or 1: {s!r}")
    return v


def parse_pid(s: str) -> int:
    """``cgroup.procs``/``cgroup.threads``: any kstrtoint error or a negative value is EINVAL."""
    try:
        v = kstrtoint(strstrip(s), 0)
    except OutOfRange as e:
        raise InvalidArgument(str(e)) from None
    if v < 0:
        raise InvalidArgument(f"negative pid: {s!r}")
    return v


def parse_subtree_control(s: str, controllers: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """Split on single spaces; each token ``+name``/``-name``; later tokens win.

    Returns (enable, disable). Unknown names or a missing prefix are EINVAL.
    """
    enable: set[str] = set()
    disable: set[str] = set()
    for tok in strstrip(s).split(" "):
        if not tok:
            continue
        name = tok[1:]
        if name not in controllers:
            raise InvalidArgument(f"unknown controller in {tok!r}")
        if tok[0] == "+":
            enable.add(name)
            disable.discard(name)
        elif tok[0] == "-":
            disable.add(name)
            enable.discard(name)
        else:
            raise InvalidArgument(f"token {tok!r} lacks a +/- prefix")
    return enable, disable


def split_region_value(line: str) -> tuple[str, str]:
    """Split a stripped ``"<region> <value>"`` at the first space or tab (``strsep``)."""
    for i, c in enumerate(line):
        if c in " \t":
            name, value = line[:i], line[i + 1 :]
            break
    else:
        raise InvalidArgument(f"expected '<region> <value>', got {line!r}")
    if not name:
        raise InvalidArgument("empty region name")
    return name, value
