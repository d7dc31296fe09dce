"""Device configuration files: a bad one is refused whole, with one line naming the file,
the line and the key."""

from __future__ import annotations

from dmemfs.testing import is_mounted
from tests.cli.conftest import dmemfs, one_line_error


def test_bad_config_files_are_one_line_errors_naming_file_line_and_key(
        mountpoint: str, tmp_path) -> None:
    cfg = tmp_path / "c.toml"

    def error(content: bytes) -> str:
        cfg.write_bytes(content)
        return one_line_error(dmemfs("mount", mountpoint, "--config", str(cfg)))

    at = f"dmemfs: config {cfg}"
    assert error(b'[[device]]\npci = "0000:03:00.0"\nvram0 = "1Q"\n') == (
        f"{at} line 3: device #1: vram0='1Q': not a size (use bytes or a K/M/G suffix)\n")
    assert error(b'[[device]]\nvram0 = "1G"\n\n[[device]]\npci = "0000:04:00.0"\n'
                 b'vrma0 = "1G"\n').startswith(f"{at} line 6: device #2: unknown key(s) vrma0")
    assert error(b'[[device]]\nvram0 = "64K"\nsystem = "1000"\n').startswith(
        f"{at} line 3: device #1: system=1000: must be a positive multiple of 4 KiB")
    assert error(b'[[device]]\nvram0 = true\n').startswith(f"{at} line 2: device #1: vram0:")
    # Not UTF-8: the line of the first bad byte, no UnicodeDecodeError traceback.
    assert error(b'[[device]]\nvram0 = "1G"\n# caf\xe9\n') == (
        f"{at} line 3: not UTF-8 text (byte 0xe9); TOML files are UTF-8\n")
    # An unknown table (a typo for [[device]]) or an empty file is refused, not ignored
    # in favour of the default device.
    assert error(b'[[gpu]]\nvram0 = "1G"\n') == (
        f"{at} line 1: unknown table [[gpu]] (only [[device]] tables are read)\n")
    assert error(b'vram0 = "1G"\n').startswith(f"{at} line 1: unknown key 'vram0'")
    assert error(b"").startswith(f"{at}: no [[device]] table")
    assert error(b'[device]\nvram0 = "1G"\n').startswith(
        f"{at} line 1: 'device' must be an array of tables")
    # TOML syntax errors keep tomllib's words, with the line and column up front.
    assert error(b'[[device]]\nvram0 = \n').startswith(f"{at} line 2 column 9: Invalid value")
    assert not is_mounted(mountpoint)
