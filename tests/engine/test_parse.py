"""Parsers and formatters: memparse, kstrtoint and the cgroup file grammars (docs/kernel-model.md
§4, §14)."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmemfs.engine import parse
from dmemfs.engine.parse import (
    format_counter,
    format_max_int,
    kstrtoint,
    memparse,
    parse_bool01,
    parse_limit,
    parse_max_int,
    parse_pid,
    parse_subtree_control,
    simple_strtoull,
    split_region_value,
    strstrip,
)
from dmemfs.errors import InvalidArgument, OutOfRange
from dmemfs.profile import INT_MAX, PAGE_COUNTER_MAX, U64_MASK

U64 = 1 << 64


def raises_errno(exc: pytest.ExceptionInfo[BaseException], code: int) -> None:
    assert getattr(exc.value, "errno", None) == code, (exc.value, code)


# -- memparse / parse_limit (docs/kernel-model.md §4) ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1", 1),
        ("4096", 4096),
        ("17179869184", 16 << 30),
        ("0x10", 16),
        ("0X1f", 31),
        ("0xFF", 255),
        ("010", 8),  # leading 0 = octal
        ("0777", 511),
        ("00", 0),
    ],
)
def test_memparse_numbers_base0(text: str, value: int) -> None:
    assert memparse(text) == (value, "")
    assert parse_limit(text) == value


@pytest.mark.parametrize(
    ("suffix", "shift"),
    [("K", 10), ("M", 20), ("G", 30), ("T", 40), ("P", 50), ("E", 60)],
)
@pytest.mark.parametrize("case", [str.upper, str.lower])
def test_memparse_binary_suffixes_both_cases(
    suffix: str, shift: int, case: Callable[[str], str]
) -> None:
    s = case(suffix)
    assert parse_limit(f"1{s}") == 1 << shift
    assert parse_limit(f"3{s}") == (3 << shift) & U64_MASK
    # The suffix applies to octal and hex numbers too (except E, a hex digit: see below).
    assert parse_limit(f"010{s}") == (8 << shift) & U64_MASK
    if s.upper() != "E":
        assert parse_limit(f"0x2{s}") == (2 << shift) & U64_MASK


def test_memparse_hex_eats_e_suffix() -> None:
    # simple_strtoull consumes every hex digit first, so "0x2E" is 0x2e = 46, not 2 EiB.
    assert parse_limit("0x2E") == 0x2E == 46
    assert parse_limit("0x2e") == 46
    assert parse_limit("0x1EK") == 0x1E << 10


@pytest.mark.parametrize("suffix", list("KkMmGgTtPpEe"))
def test_bare_suffix_parses_as_zero(suffix: str) -> None:
    # docs/kernel-model.md §4 (a bare suffix parses as 0): simple_strtoull consumes nothing, the
    # suffix is still eaten -> 0.
    assert memparse(suffix) == (0, "")
    assert parse_limit(suffix) == 0


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        ("1GB", "B"),
        ("1Gi", "i"),
        ("1 G", " G"),
        ("-1", "-1"),  # no sign accepted
        ("+1", "+1"),
        ("1.5G", ".5G"),
        ("1KK", "K"),
        ("08", "8"),  # octal stops at 8
        ("0x", "x"),  # "0x" without a hex digit: octal 0, then "x"
        ("0xg", "xg"),
        ("12abc", "abc"),
        ("1\n", "\n"),
        ("max ", None),
        ("MAX", None),
        ("Max", None),
        (" 1", None),
        ("1 ", " "),
        ("1\t", "\t"),
    ],
)
def test_parse_limit_leftover_is_einval(text: str, rest: str | None) -> None:
    if rest is not None:
        assert memparse(text)[1] == rest
    with pytest.raises(InvalidArgument) as exc:
        parse_limit(text)
    raises_errno(exc, errno.EINVAL)


def test_parse_limit_empty_value_is_zero_like_memparse() -> None:
    # memparse("") consumes nothing and leaves nothing over, and dmemcg_parse_limit only checks for
    # leftover characters, so an empty value means 0 (docs/kernel-model.md §4, steps 5 and "any
    # character left over"). The write path can never hand parse_limit an empty value: the buffer
    # is stripped first and "<region>" alone is EINVAL (no separator, see test_dmem.py).
    assert memparse("") == (0, "")
    assert parse_limit("") == 0


def test_parse_limit_max_is_exact_and_case_sensitive() -> None:
    assert parse_limit("max") == PAGE_COUNTER_MAX
    for bad in ("Max", "MAX", "max\n", "maximum", "ma"):
        with pytest.raises(InvalidArgument):
            parse_limit(bad)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16E", 0),  # 16 << 60 == 2**64 wraps to 0
        ("17E", 1 << 60),
        ("18446744073709551615", U64_MASK),
        ("18446744073709551616", 0),  # one more than u64 max wraps
        ("18446744073709551617", 1),
        ("0x10000000000000001", 1),
        ("0xffffffffffffffffK", (U64_MASK << 10) & U64_MASK),
        ("36893488147419103232", 0),  # 2**65
    ],
)
def test_memparse_wraps_mod_2_64(text: str, value: int) -> None:
    assert parse_limit(text) == value


@given(st.integers(min_value=0, max_value=(1 << 80)))
def test_memparse_decimal_roundtrip_wraps(n: int) -> None:
    assert parse_limit(str(n)) == n % U64
    assert parse_limit(hex(n)) == n % U64
    assert parse_limit("0" + oct(n)[2:]) == n % U64


def test_simple_strtoull_returns_unparsed_rest() -> None:
    assert simple_strtoull("123xyz") == (123, "xyz")
    assert simple_strtoull("0x1Fz") == (31, "z")
    assert simple_strtoull("z") == (0, "z")
    assert simple_strtoull("") == (0, "")
    assert simple_strtoull("ff", 16) == (255, "")
    assert simple_strtoull("0xff", 16) == (255, "")


# -- format_counter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1, "1"),
        (PAGE_COUNTER_MAX - 1, str(PAGE_COUNTER_MAX - 1)),
        (PAGE_COUNTER_MAX, "max"),
        (PAGE_COUNTER_MAX + 1, "max"),
        (U64_MASK, "max"),
    ],
)
def test_format_counter(value: int, text: str) -> None:
    assert format_counter(value) == text


def test_page_counter_max_constant() -> None:
    # LONG_MAX / PAGE_SIZE on 64-bit with 4 KiB pages (docs/kernel-model.md §3).
    assert PAGE_COUNTER_MAX == 2251799813685247 == ((1 << 63) - 1) // 4096


# -- kstrtoint (docs/kernel-model.md §14) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1", 1),
        ("+1", 1),
        ("-1", -1),
        ("-0", 0),
        ("+0", 0),
        ("0x10", 16),
        ("0X10", 16),
        ("-0x10", -16),
        ("+0x10", 16),
        ("010", 8),
        ("-010", -8),
        ("1\n", 1),  # exactly one trailing newline is allowed
        ("2147483647", INT_MAX),
        ("-2147483648", -INT_MAX - 1),
        ("0x7fffffff", INT_MAX),
        ("00000000000000000000000001", 1),
    ],
)
def test_kstrtoint_valid(text: str, value: int) -> None:
    assert kstrtoint(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "1\n\n",  # only one newline
        "\n1",
        " 1",  # no stripping in kstrtoint itself
        "1 ",
        "1\t",
        "1\r\n",
        "abc",
        "1a",
        "08",  # base 0: leading 0 is octal, 8 is not an octal digit
        "0x",
        "0xg",
        "--1",
        "+-1",
        "-+1",
        "++1",
        "-",
        "+",
        "1.0",
        "1e3",
        "1K",
    ],
)
def test_kstrtoint_garbage_is_einval(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        kstrtoint(text)
    raises_errno(exc, errno.EINVAL)


@pytest.mark.parametrize(
    "text",
    [
        "2147483648",
        "-2147483649",
        "0x80000000",
        "4294967296",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",  # overflows u64 while parsing
        "99999999999999999999999999",
        "-99999999999999999999999999",
        "2147483648\n",
    ],
)
def test_kstrtoint_overflow_is_erange(text: str) -> None:
    with pytest.raises(OutOfRange) as exc:
        kstrtoint(text)
    raises_errno(exc, errno.ERANGE)


def test_kstrtoint_explicit_base() -> None:
    assert kstrtoint("10", 10) == 10
    assert kstrtoint("010", 10) == 10
    assert kstrtoint("ff", 16) == 255
    assert kstrtoint("0xff", 16) == 255
    with pytest.raises(InvalidArgument):
        kstrtoint("0x10", 10)


# -- parse_pid (cgroup.procs / cgroup.threads, docs/kernel-model.md §14) --------------------------


@pytest.mark.parametrize(
    ("text", "pid"),
    [("0", 0), ("1", 1), ("1234\n", 1234), ("  42  ", 42), ("\t7\n", 7), ("0x10", 16),
     ("+5", 5), ("2147483647", INT_MAX), ("\xa09\xa0", 9)],
)
def test_parse_pid_valid(text: str, pid: int) -> None:
    assert parse_pid(text) == pid


@pytest.mark.parametrize(
    "text",
    ["-1", "-2147483648", "2147483648", "99999999999999999999", "abc", "", "\n", "1 2",
     "1\n2", "0x", "1,2"],
)
def test_parse_pid_errors_are_all_einval(text: str) -> None:
    # Every kstrtoint error (ERANGE included) and any negative value is EINVAL.
    with pytest.raises(InvalidArgument) as exc:
        parse_pid(text)
    raises_errno(exc, errno.EINVAL)


# -- cgroup.max.depth / cgroup.max.descendants (docs/kernel-model.md §14) -------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("max", INT_MAX), ("max\n", INT_MAX), (" max ", INT_MAX), ("0", 0), ("5\n", 5),
     ("0x10", 16), ("2147483647", INT_MAX), ("-0", 0), ("+3", 3)],
)
def test_parse_max_int_valid(text: str, value: int) -> None:
    assert parse_max_int(text) == value


@pytest.mark.parametrize("text", ["-1", "-2147483648", "-0x1", "2147483648"])
def test_parse_max_int_negative_or_huge_is_erange(text: str) -> None:
    with pytest.raises(OutOfRange) as exc:
        parse_max_int(text)
    raises_errno(exc, errno.ERANGE)


@pytest.mark.parametrize("text", ["MAX", "Max", "maxx", "", "abc", "1 2", "max 1", "1.5", "\n"])
def test_parse_max_int_garbage_is_einval(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_max_int(text)
    raises_errno(exc, errno.EINVAL)


def test_format_max_int() -> None:
    assert format_max_int(INT_MAX) == "max\n"
    assert format_max_int(0) == "0\n"
    assert format_max_int(7) == "7\n"
    assert format_max_int(INT_MAX - 1) == f"{INT_MAX - 1}\n"


# -- cgroup.freeze ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("1", 1), ("1\n", 1), (" 0 ", 0),
                                             ("0x1", 1), ("+1", 1), ("-0", 0)])
def test_parse_bool01_valid(text: str, value: int) -> None:
    assert parse_bool01(text) == value


@pytest.mark.parametrize("text", ["2", "-1", "10", "0x2", "2147483647"])
def test_parse_bool01_other_ints_are_erange(text: str) -> None:
    with pytest.raises(OutOfRange) as exc:
        parse_bool01(text)
    raises_errno(exc, errno.ERANGE)


@pytest.mark.parametrize("text", ["", "yes", "true", "1 1", "one", "2147483648x"])
def test_parse_bool01_garbage_is_einval(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_bool01(text)
    raises_errno(exc, errno.EINVAL)


def test_parse_bool01_overflow_is_erange() -> None:
    with pytest.raises(OutOfRange):
        parse_bool01("2147483648")


# -- cgroup.subtree_control (docs/kernel-model.md §14) --------------------------------------------

CTRLS = ("dmem",)
TWO = ("misc", "dmem")


@pytest.mark.parametrize(
    ("text", "enable", "disable"),
    [
        ("+dmem", {"dmem"}, set()),
        ("-dmem", set(), {"dmem"}),
        ("+dmem\n", {"dmem"}, set()),
        ("  +dmem  ", {"dmem"}, set()),
        ("+dmem  +dmem", {"dmem"}, set()),  # empty tokens between spaces are skipped
        ("+dmem -dmem", set(), {"dmem"}),  # later token wins
        ("-dmem +dmem", {"dmem"}, set()),
        ("+dmem -dmem +dmem", {"dmem"}, set()),
        ("", set(), set()),
        ("\n", set(), set()),
        ("   ", set(), set()),
    ],
)
def test_parse_subtree_control(text: str, enable: set[str], disable: set[str]) -> None:
    assert parse_subtree_control(text, CTRLS) == (enable, disable)


def test_parse_subtree_control_several_controllers() -> None:
    assert parse_subtree_control("+misc -dmem", TWO) == ({"misc"}, {"dmem"})
    assert parse_subtree_control("+misc +dmem -misc", TWO) == ({"dmem"}, {"misc"})


@pytest.mark.parametrize(
    "text",
    [
        "+dmem\t-dmem",  # tabs are not separators: one token naming "dmem\t-dmem"
        "+dmem\t+dmem",
        "+memory",
        "dmem",  # no prefix
        "*dmem",
        "+",
        "-",
        "+DMEM",
        "+dmem,-dmem",
        "+dmem +cpu",  # all-or-nothing: one unknown token fails the whole write
        "+dmem\n-dmem",
    ],
)
def test_parse_subtree_control_einval(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_subtree_control(text, CTRLS)
    raises_errno(exc, errno.EINVAL)


def test_parse_subtree_control_outer_tabs_are_stripped() -> None:
    assert parse_subtree_control("\t+dmem\t", CTRLS) == ({"dmem"}, set())


# -- split_region_value (docs/kernel-model.md §4 step 2) ------------------------------------------


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("drm/0000:03:00.0/vram0 1G", "drm/0000:03:00.0/vram0", "1G"),
        ("r\t5", "r", "5"),
        ("r  5", "r", " 5"),  # only the first separator is consumed
        ("r \t5", "r", "\t5"),
        ("r 1 2", "r", "1 2"),
        ("r ", "r", ""),
        ("r 1\nq 2", "r", "1\nq 2"),
        ("r\xa05 6", "r\xa05", "6"),  # 0xA0 is not a separator
    ],
)
def test_split_region_value(line: str, name: str, value: str) -> None:
    assert split_region_value(line) == (name, value)


@pytest.mark.parametrize("line", ["", "region", "r\xa05", " 5", "\t5", "r\n5"])
def test_split_region_value_einval(line: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        split_region_value(line)
    raises_errno(exc, errno.EINVAL)


# -- strstrip with the kernel's isspace() ------------------------------------------------


def test_kspace_is_the_kernel_ctype_set() -> None:
    assert set(parse.KSPACE) == {" ", "\t", "\n", "\v", "\f", "\r", "\xa0"}


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("  a  ", "a"),
        ("\t\n\v\f\r a \r\f\v\n\t", "a"),
        ("\xa0a\xa0", "a"),  # 0xA0 (NBSP) is space in lib/ctype.c
        ("a b", "a b"),  # inner white space kept
        ("", ""),
        (" \n\xa0", ""),
        # Python's str.strip() would also remove these; the kernel's isspace() does not.
        ("\x1ca\x1f", "\x1ca\x1f"),
        ("\x85a\x85", "\x85a\x85"),
        ("\x00a\x00", "\x00a\x00"),
    ],
)
def test_strstrip(text: str, out: str) -> None:
    assert strstrip(text) == out
