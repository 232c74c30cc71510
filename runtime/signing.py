"""Bundle signatures: Ed25519 keys, the canonical manifest, and the signature file.

What is signed is the canonical manifest: the parsed `manifest.json` written back as
UTF-8 JSON with sorted keys and no whitespace (`canonical_manifest`), after a fixed
domain prefix. The manifest holds every file's size and sha256, so one signature covers
the whole bundle. The signature lives beside it in `manifest.sig` (JSON: algorithm, key
id, public key, signature, all base64), which is not in the manifest's file list.

Keys are PEM files: `air-signing.key` (PKCS#8, mode 0600) and `air-signing.pub`
(SubjectPublicKeyInfo). A key is named by its id, `ed25519:` + 16 hex digits of the
sha256 of its 32 raw bytes. `cryptography` is imported only when a key or a signature is
actually handled, so a device without trust configured never loads it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from air.errors import AirError

SIGNATURE_NAME = "manifest.sig"
PRIVATE_KEY_NAME = "air-signing.key"
PUBLIC_KEY_NAME = "air-signing.pub"
ALGORITHM = "ed25519"
_DOMAIN = b"air-bundle-manifest-v1\n"  # a signature over a manifest can never be read as one over anything else


def canonical_manifest(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(canonical_manifest(manifest)).hexdigest()


def key_id(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{ALGORITHM}:{hashlib.sha256(raw).hexdigest()[:16]}"


def generate_keys(folder: Path) -> str:
    """Write a new key pair into `folder`; refuses to overwrite an existing key. Returns its id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    for name in (PRIVATE_KEY_NAME, PUBLIC_KEY_NAME):
        if (folder / name).exists():
            raise AirError(f"{folder / name}: a key already exists; refusing to overwrite it")
    for name, data, mode in ((PRIVATE_KEY_NAME, private_pem, 0o600), (PUBLIC_KEY_NAME, public_pem, 0o644)):
        with os.fdopen(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            f.write(data)
    return key_id(private.public_key())


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise AirError(f"{path}: cannot read the signing key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AirError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise AirError(f"{path}: cannot read the public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AirError(f"{path}: not an Ed25519 public key")
    return key


def signature_for(manifest: dict, private_key) -> bytes:
    """The contents of `manifest.sig` for this manifest."""
    from cryptography.hazmat.primitives import serialization

    public = private_key.public_key()
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id(public),
        "public_key": base64.b64encode(public.public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw)).decode(),
        "signature": base64.b64encode(private_key.sign(_DOMAIN + canonical_manifest(manifest))).decode(),
    }
    return (json.dumps(record, indent=1) + "\n").encode()


def write_signature(root: Path, manifest: dict, private_key) -> str:
    """Sign `manifest` (the one in `root`) into root/manifest.sig, replacing any old one atomically."""
    data = signature_for(manifest, private_key)
    staging = root / f".{SIGNATURE_NAME}.partial"
    staging.write_bytes(data)
    os.chmod(staging, 0o644)
    os.replace(staging, root / SIGNATURE_NAME)
    return key_id(private_key.public_key())


def read_signature(root: Path) -> bytes | None:
    try:
        return (root / SIGNATURE_NAME).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AirError(f"{root / SIGNATURE_NAME}: unreadable ({e})") from None


def parse_signature(data: bytes, where: str) -> dict:
    """The fields of a `manifest.sig`, checked for shape (not yet for validity)."""
    try:
        record = json.loads(data)
        if record["algorithm"] != ALGORITHM:
            raise AirError(f"{where}: signature algorithm '{record['algorithm']}' is not supported (only {ALGORITHM})")
        signature = base64.b64decode(record["signature"], validate=True)
        public = base64.b64decode(record["public_key"], validate=True)
        if not isinstance(record["key_id"], str) or len(signature) != 64 or len(public) != 32:
            raise ValueError("wrong field sizes")
    except (ValueError, KeyError, TypeError) as e:
        raise AirError(f"{where}: malformed {SIGNATURE_NAME} ({e})") from None
    return {"key_id": record["key_id"], "signature": signature, "public_key": public}


def signature_valid(manifest: dict, signature: bytes, public_key) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(signature, _DOMAIN + canonical_manifest(manifest))
    except InvalidSignature:
        return False
    return True


def describe_signer(manifest: dict, data: bytes, where: str) -> str:
    """For `air-build inspect`: who signed, and whether the signature holds for its own key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    record = parse_signature(data, where)
    public = Ed25519PublicKey.from_public_bytes(record["public_key"])
    named = key_id(public)
    if not signature_valid(manifest, record["signature"], public):
        return f"signature by {named} does NOT match this manifest"
    return f"signed by {named} (valid for this manifest; trust is decided on the device)"
