"""Device configuration: ``--device`` specs and the TOML config file.

A spec is ``xe,pci=0000:03:00.0,vram0=16G[,vram1=16G][,system=64G]``. The TOML file holds the
same as ``[[device]]`` tables with the same keys.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

from dmemfs.engine.parse import memparse

GiB = 1 << 30
VRAM_PAGE = 64 << 10
SYSTEM_PAGE = 4 << 10
DEFAULT_PCI = "0000:03:00.0"
_PCI = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


class ConfigError(ValueError):
    """A bad device spec or config file; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    pci: str
    #: VRAM region sizes in bytes, ``vram0`` first (one or two regions).
    vram: tuple[int, ...]
    system: int = 64 * GiB
    driver: str = "xe"
    #: Whether the device can do PCIe peer-to-peer DMA with other capable devices.
    p2p: bool = True

    def region_names(self) -> list[str]:
        return [f"drm/{self.pci}/vram{i}" for i in range(len(self.vram))]


DEFAULT_DEVICE = DeviceConfig(pci=DEFAULT_PCI, vram=(16 * GiB,))


class _FieldError(ConfigError):
    """A bad value or key inside one device (the caller says where)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key


def _size(key: str, text: str, page: int) -> int:
    value, rest = memparse(text.strip())
    if rest or not text.strip():
        raise _FieldError(key, f"{key}={text!r}: not a size (use bytes or a K/M/G suffix)")
    if value <= 0 or value % page:
        raise _FieldError(key, f"{key}={text}: must be a positive multiple of "
                          f"{page // 1024} KiB")
    return value


def _build(fields: dict[str, str]) -> DeviceConfig:
    unknown = sorted(set(fields) - {"driver", "pci", "vram0", "vram1", "system", "p2p"})
    if unknown:
        raise _FieldError(unknown[0], f"unknown key(s) {', '.join(unknown)} "
                          "(known: driver, pci, vram0, vram1, system, p2p)")
    driver = fields.get("driver", "xe")
    if driver != "xe":
        raise _FieldError("driver", f"only the 'xe' driver is simulated, not {driver!r}")
    pci = fields.get("pci", DEFAULT_PCI).lower()
    if not _PCI.match(pci):
        raise _FieldError("pci", f"pci={pci!r} is not a PCI address like 0000:03:00.0")
    if "vram0" not in fields:
        if "vram1" in fields:
            raise _FieldError("vram1", "vram1 needs vram0")
        vram: tuple[int, ...] = (16 * GiB,)
    else:
        vram = (_size("vram0", fields["vram0"], VRAM_PAGE),)
        if "vram1" in fields:
            vram += (_size("vram1", fields["vram1"], VRAM_PAGE),)
    system = _size("system", fields["system"], SYSTEM_PAGE) if "system" in fields else 64 * GiB
    p2p_text = fields.get("p2p", "1").lower()
    if p2p_text not in ("0", "1", "true", "false"):
        raise _FieldError("p2p", f"p2p={fields['p2p']!r} must be 0 or 1")
    return DeviceConfig(pci=pci, vram=vram, system=system, driver=driver,
                        p2p=p2p_text in ("1", "true"))


def parse_device_spec(spec: str) -> DeviceConfig:
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts or parts[0] != "xe":
        raise ConfigError(f"device spec {spec!r} must start with 'xe,'")
    fields: dict[str, str] = {"driver": "xe"}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"device spec {spec!r}: {part!r} is not key=value")
        if key in fields:
            raise ConfigError(f"device spec {spec!r}: {key} given twice")
        fields[key] = value
    try:
        return _build(fields)
    except _FieldError as e:
        raise ConfigError(f"device spec {spec!r}: {e}") from None


_TOML_WHERE = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")
_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]*?)\s*\]\]?")
_KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")


def _key_lines(text: str) -> tuple[dict[tuple[str, int, str], int], dict[str, int]]:
    """Where things are defined: ((table, index, key) → line, table header → first line).

    Top-level keys have table ''. Enough for the one-line errors; tomllib has validated the
    syntax already.
    """
    keys: dict[tuple[str, int, str], int] = {}
    tables: dict[str, int] = {}
    counts: dict[str, int] = {}
    table, index = "", 0
    for lineno, line in enumerate(text.splitlines(), 1):
        header = _TABLE.match(line)
        if header:
            table = header.group(1).strip().strip("\"'")
            index = counts.get(table, 0)
            counts[table] = index + 1
            tables.setdefault(table, lineno)
            continue
        key = _KEY.match(line)
        if key:
            name = next(g for g in key.groups() if g is not None)
            keys.setdefault((table, index, name), lineno)
    return keys, tables


def _at(path: str, line: int | None) -> str:
    return f"config {path} line {line}" if line else f"config {path}"


def load_config(path: str) -> list[DeviceConfig]:
    """The ``[[device]]`` tables of a TOML file. Errors are one line that names the file, the
    line and the key: ``config FILE line N: device #1: vram0='1Q': not a size …``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = _at(path, raw[: e.start].count(b"\n") + 1)
        raise ConfigError(f"{at}: not UTF-8 text (byte "
                          f"0x{raw[e.start]:02x}); TOML files are UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        where = _TOML_WHERE.match(msg)
        if where:
            raise ConfigError(f"config {path} line {where.group(2)} column {where.group(3)}: "
                              f"{where.group(1)}") from None
        msg = msg.replace("(at end of document)", "at the end of the file")
        raise ConfigError(f"config {path}: {msg}") from None
    keys, tables = _key_lines(text)
    for name, value in data.items():
        if name != "device":
            if isinstance(value, list):
                what = f"table [[{name}]]"
            else:
                what = f"table [{name}]" if isinstance(value, dict) else f"key {name!r}"
            at = _at(path, tables.get(name) or keys.get(("", 0, name)))
            raise ConfigError(f"{at}: unknown {what} (only [[device]] tables are read)")
    devices = data.get("device")
    if devices is None:
        raise ConfigError(f"config {path}: no [[device]] table (an empty config is refused "
                          "rather than mounting the default device)")
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        at = _at(path, tables.get("device") or keys.get(("", 0, "device")))
        raise ConfigError(f"{at}: 'device' must be an array of tables ([[device]])")
    out = []
    for i, d in enumerate(devices):
        try:
            bad = next((k for k, v in d.items() if not isinstance(v, str | int)
                        or isinstance(v, bool)), None)
            if bad is not None:
                raise _FieldError(bad, f"{bad}: a string or an integer, not {d[bad]!r}")
            out.append(_build({k: str(v) for k, v in d.items()}))
        except _FieldError as e:
            at = _at(path, keys.get(("device", i, e.key)) if e.key else None)
            raise ConfigError(f"{at}: device #{i + 1}: {e}") from None
    return out


def check_unique(devices: list[DeviceConfig]) -> None:
    seen = set()
    for d in devices:
        if d.pci in seen:
            raise ConfigError(f"two devices at PCI address {d.pci}")
        seen.add(d.pci)
