"""Device families: TVM targets, linkers and CPU requirements (workstation side only)."""

from .catalog import DEVICES, NEEDS, Device, host_device, resolve_device

__all__ = ["DEVICES", "Device", "NEEDS", "host_device", "resolve_device"]
