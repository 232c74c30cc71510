"""What this device trusts: the public keys a bundle must be signed with, and the check.

Trusted keys come from `air-run --trust PUBKEY` (repeatable) and from every `*.pub` file in
the trusted-keys folder: `$AIR_TRUSTED_KEYS` if set (it must then exist), else
`$XDG_CONFIG_HOME/air/trusted-keys` (default `~/.config/air/trusted-keys`) when present.
A folder or key file that others may write is refused, since whoever can add a key there
can run code. With at least one key, every bundle must carry a valid signature by one of
them. `AIR_REQUIRE_SIGNATURE=1` makes signatures mandatory even when no key is found (a
device whose key folder went missing refuses everything instead of running unchecked);
it is an environment setting of the device, never a bundle or recipe setting, because a
device cannot take the bundle's word on whether to check the bundle.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

from air.errors import AirError

from .signing import SIGNATURE_NAME

KEYS_FOLDER_ENV = "AIR_TRUSTED_KEYS"
REQUIRE_ENV = "AIR_REQUIRE_SIGNATURE"


def default_keys_folder() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "air" / "trusted-keys"


def _refuse_if_writable_by_others(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AirError(f"{path}: trusted keys must not be writable by group or others (mode {stat.S_IMODE(mode):o})")


def _folder_key_files() -> list[Path]:
    configured = os.environ.get(KEYS_FOLDER_ENV)
    folder = Path(configured) if configured else default_keys_folder()
    if not folder.is_dir():
        if configured:
            raise AirError(f"{KEYS_FOLDER_ENV}={configured}: trusted-keys folder not found")
        return []
    _refuse_if_writable_by_others(folder)
    return sorted(folder.glob("*.pub"))


@dataclasses.dataclass(frozen=True)
class Trust:
    keys: dict  # key id -> Ed25519 public key
    required: bool

    @classmethod
    def configure(cls, key_files: tuple[str, ...] = ()) -> "Trust":
        """From --trust files, the trusted-keys folder and AIR_REQUIRE_SIGNATURE."""
        paths = [Path(p) for p in key_files] + _folder_key_files()
        required = os.environ.get(REQUIRE_ENV, "") not in ("", "0")
        if not paths:
            if required:
                raise AirError(f"{REQUIRE_ENV} is set but no trusted key is configured "
                               f"(give --trust PUBKEY or put *.pub files in {KEYS_FOLDER_ENV} or {default_keys_folder()})")
            return cls({}, False)
        from .signing import key_id, load_public_key

        keys = {}
        for path in paths:
            if not path.is_file():
                raise AirError(f"{path}: trusted key file not found")
            _refuse_if_writable_by_others(path)
            key = load_public_key(path)
            keys[key_id(key)] = key
        return cls(keys, True)

    def check(self, manifest: dict, signature: bytes | None, where: str) -> dict:
        """Refuse a manifest not signed by a trusted key; say what was checked."""
        if not self.required:
            return {"signature_checked": False, "signer": None}
        from .signing import parse_signature, signature_valid

        if signature is None:
            raise AirError(f"{where}: bundle is not signed ({SIGNATURE_NAME} missing) and this device "
                           "runs only bundles signed by a trusted key")
        record = parse_signature(signature, where)
        key = self.keys.get(record["key_id"])
        if key is None:
            raise AirError(f"{where}: bundle is signed by key {record['key_id']}, which this device does not trust")
        if not signature_valid(manifest, record["signature"], key):
            raise AirError(f"{where}: signature by {record['key_id']} does not match the manifest "
                           "(manifest or signature modified)")
        return {"signature_checked": True, "signer": record["key_id"]}

