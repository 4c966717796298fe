"""Authorship of a shared bundle: Ed25519 signatures over ``manifest.json`` (the sha256 of every other file).

``generate_key`` writes a private key (PKCS#8 PEM, mode 0600) and ``<key>.pub`` (one line
``pipeline-ed25519 <base64 raw key> <comment>``); ``sign_manifest`` writes ``signature.json`` next to the manifest;
``check_signature`` accepts it only if the signature is valid *and* the public key is one the receiver trusts (a
``.pub`` file or a folder of them). A key is named by a short fingerprint (``fingerprint``) that the two sites read
out to each other over the phone when they exchange public keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.share.report import ShareError
from pipeline.utils.atomic import write_text

__all__ = [
    "SIGNATURE",
    "TRUSTED_KEYS_ENV",
    "PublicKey",
    "check_signature",
    "fingerprint",
    "generate_key",
    "load_trusted_keys",
    "sign_manifest",
]

SIGNATURE = "signature.json"
TRUSTED_KEYS_ENV = "PIPELINE_TRUSTED_KEYS"
_PUB_TAG = "pipeline-ed25519"
_FORMAT = "pipeline-bundle-signature/1"


@dataclass(frozen=True)
class PublicKey:
    """A trusted public key: raw 32 bytes, where it came from, and its fingerprint."""

    raw: bytes
    origin: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)


def fingerprint(raw: bytes) -> str:
    """Short, readable name of a public key: the first 80 bits of its sha256, ``xxxx-xxxx-xxxx-xxxx-xxxx``."""
    digest = hashlib.sha256(raw).hexdigest()[:20]
    return "-".join(digest[i : i + 4] for i in range(0, 20, 4))


def _crypto():  # type: ignore[no-untyped-def]
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ShareError("signing needs the 'cryptography' package: pip install 'cryptography>=42'.") from e
    return serialization, ed25519


def generate_key(path: str | os.PathLike, comment: str = "") -> tuple[Path, Path, str]:
    """Write a new Ed25519 private key to ``path`` (0600, never overwritten) and ``path.pub``.

    Returns:
        ``(private_path, public_path, fingerprint)``.

    Raises:
        ShareError: ``path`` or ``path.pub`` exists.
    """
    serialization, ed25519 = _crypto()
    private, public = Path(path), Path(f"{path}.pub")
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise ShareError(f"{p} exists; refusing to overwrite a key. Choose another path.")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    private.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    label = " ".join(comment.split()) or private.stem
    write_text(public, f"{_PUB_TAG} {base64.b64encode(raw).decode()} {label}\n")
    return private, public, fingerprint(raw)


def _parse_pub(text: str, origin: str) -> PublicKey:
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != _PUB_TAG:
        raise ShareError(f"{origin}: not a public key written by `pipeline keygen` ('{_PUB_TAG} <base64> ...').")
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except binascii.Error as e:
        raise ShareError(f"{origin}: public key is not valid base64.") from e
    if len(raw) != 32:
        raise ShareError(f"{origin}: an Ed25519 public key has 32 bytes, got {len(raw)}.")
    return PublicKey(raw, origin)


def load_trusted_keys(source: str | os.PathLike | None) -> list[PublicKey]:
    """Public keys from a ``.pub`` file or every ``*.pub`` in a folder (default ``$PIPELINE_TRUSTED_KEYS``)."""
    source = source or os.environ.get(TRUSTED_KEYS_ENV) or None
    if source is None:
        return []
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.pub"))
    elif path.is_file():
        files = [path]
    else:
        raise ShareError(f"trusted keys {path}: no such file or folder. Pass a .pub file or a folder of them.")
    return [_parse_pub(f.read_text(encoding="utf-8"), str(f)) for f in files]


def sign_manifest(manifest: Path, key_path: str | os.PathLike) -> str:
    """Sign the exact bytes of ``manifest`` with the private key at ``key_path``; write ``signature.json`` beside
    it. Returns the key's fingerprint."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ShareError(f"--sign {key_path}: cannot read an unencrypted PEM private key ({e}).") from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ShareError(f"--sign {key_path}: not an Ed25519 key; make one with `python -m pipeline keygen`.")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = {
        "format": _FORMAT,
        "algorithm": "ed25519",
        "signed_file": manifest.name,
        "public_key": base64.b64encode(raw).decode(),
        "fingerprint": fingerprint(raw),
        "signature": base64.b64encode(key.sign(manifest.read_bytes())).decode(),
    }
    write_text(manifest.parent / SIGNATURE, json.dumps(signature, indent=4) + "\n")
    return fingerprint(raw)


def check_signature(root: Path, manifest: Path, trusted: list[PublicKey]) -> tuple[str, str]:
    """``(state, text)`` for ``root/signature.json``: state ``valid`` (a trusted key signed this manifest),
    ``unsigned``, ``unknown`` (a valid signature by a key not trusted here) or ``invalid``."""
    _, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    path = root / SIGNATURE
    if not path.is_file():
        return "unsigned", f"no {SIGNATURE}: nothing proves who made this bundle"
    try:
        sig = json.loads(path.read_text(encoding="utf-8"))
        raw = base64.b64decode(sig["public_key"], validate=True)
        signature = base64.b64decode(sig["signature"], validate=True)
        if sig.get("format") != _FORMAT or sig.get("algorithm") != "ed25519" or len(raw) != 32:
            raise ValueError("unknown format or algorithm")
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(signature, manifest.read_bytes())
    except InvalidSignature:
        return "invalid", "signature does not match manifest.json (modified after signing, or forged)"
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, RecursionError) as e:
        return "invalid", f"{SIGNATURE} unreadable ({type(e).__name__})"
    fp = fingerprint(raw)
    match = next((k for k in trusted if k.raw == raw), None)
    if match is None:
        return "unknown", f"validly signed by key {fp}, which is not among your trusted keys"
    return "valid", f"signed by trusted key {fp} ({Path(match.origin).name})"
