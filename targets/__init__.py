"""Device families: TVM targets, linkers and CPU requirements (workstation side only)."""

from .devices import DEVICES, Device, host_device, resolve_device

__all__ = ["DEVICES", "Device", "host_device", "resolve_device"]
