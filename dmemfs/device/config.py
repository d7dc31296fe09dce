"""Device configuration: ``--device`` specs and the TOML config file (SPEC §3, §8).

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


def _size(key: str, text: str, page: int) -> int:
    value, rest = memparse(text.strip())
    if rest or not text.strip():
        raise ConfigError(f"{key}={text!r}: not a size (use bytes or a K/M/G suffix)")
    if value <= 0 or value % page:
        raise ConfigError(f"{key}={text}: must be a positive multiple of {page // 1024} KiB")
    return value


def _build(fields: dict[str, str], where: str) -> DeviceConfig:
    unknown = set(fields) - {"driver", "pci", "vram0", "vram1", "system", "p2p"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    driver = fields.get("driver", "xe")
    if driver != "xe":
        raise ConfigError(f"{where}: only the 'xe' driver is simulated, not {driver!r}")
    pci = fields.get("pci", DEFAULT_PCI).lower()
    if not _PCI.match(pci):
        raise ConfigError(f"{where}: pci={pci!r} is not a PCI address like 0000:03:00.0")
    if "vram0" not in fields:
        if "vram1" in fields:
            raise ConfigError(f"{where}: vram1 needs vram0")
        vram: tuple[int, ...] = (16 * GiB,)
    else:
        vram = (_size("vram0", fields["vram0"], VRAM_PAGE),)
        if "vram1" in fields:
            vram += (_size("vram1", fields["vram1"], VRAM_PAGE),)
    system = _size("system", fields["system"], SYSTEM_PAGE) if "system" in fields else 64 * GiB
    p2p_text = fields.get("p2p", "1").lower()
    if p2p_text not in ("0", "1", "true", "false"):
        raise ConfigError(f"{where}: p2p={fields['p2p']!r} must be 0 or 1")
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
    return _build(fields, f"device spec {spec!r}")


def load_config(path: str) -> list[DeviceConfig]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: {e}") from None
    devices = data.get("device", [])
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise ConfigError(f"config {path}: 'device' must be an array of tables ([[device]])")
    out = []
    for i, d in enumerate(devices):
        fields = {k: str(v) for k, v in d.items()}
        out.append(_build(fields, f"config {path}: device #{i}"))
    return out


def check_unique(devices: list[DeviceConfig]) -> None:
    seen = set()
    for d in devices:
        if d.pci in seen:
            raise ConfigError(f"two devices at PCI address {d.pci}")
        seen.add(d.pci)
