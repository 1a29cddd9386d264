"""The checkpoint signing key: where it comes from, and its public half.

`ANIMUS_CHECKPOINT_SIGNING_KEY` holds either the base64 of the 32-byte
Ed25519 seed or the path of a PEM (PKCS#8) file holding the private key.
Left unset in development, a key is generated once into
`<home>/keys/checkpoint-signing.pem` (mode 0600) and reused by every later
start, so the checkpoints of one `animus up` home all verify under one
public key. In production an unset key stops the process: a key nobody
kept makes every checkpoint unverifiable.

The public key is published as a signed-note verifier key ("vkey",
animus/evidence/note.py); its key id is the 8-hex key hash. Processes that
only verify (the gateway, `animus verify`, a bundle export's self-check)
read it from `ANIMUS_CHECKPOINT_VERIFY_KEY`, so they need not hold the key
that could forge checkpoints; without it they derive it from the signing
key, as one development machine does. When both are set they must be one
key pair, and the vkey's name must be `ANIMUS_CHECKPOINT_ORIGIN` (settings
refuse either mismatch at load).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from animus.errors import ConfigurationError

if TYPE_CHECKING:
    from animus.evidence.note import VerifierKey
    from animus.settings import Settings

__all__ = [
    "DEV_KEY_FILE",
    "dev_key_path",
    "parse_signing_key",
    "signing_key",
    "verifier",
    "verifier_key",
]

DEV_KEY_FILE = "checkpoint-signing.pem"
SETTING = "ANIMUS_CHECKPOINT_SIGNING_KEY"
VERIFY_SETTING = "ANIMUS_CHECKPOINT_VERIFY_KEY"


def parse_signing_key(text: str) -> Ed25519PrivateKey:
    """Read a base64 seed or a PEM file's path into a private key.

    Raises:
        ValueError: saying what the setting must be, never quoting it.
    """
    text = text.strip()
    with contextlib.suppress(binascii.Error, ValueError):
        seed = base64.b64decode(text, validate=True)
        if len(seed) == 32:
            return Ed25519PrivateKey.from_private_bytes(seed)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(
            "must be the base64 of a 32-byte Ed25519 seed or the path of a PEM "
            "file holding an Ed25519 private key"
        )
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        raise ValueError(f"{path} is not a readable, unencrypted PEM key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a key that is not Ed25519")
    return key


def dev_key_path(settings: Settings) -> Path:
    return settings.home.resolve() / "keys" / DEV_KEY_FILE


def signing_key(
    settings: Settings, *, create: bool = False
) -> Ed25519PrivateKey | None:
    """The configured key; in development the generated one (made if `create`).

    Returns None only in development, when no key was generated yet and
    `create` is false. A configured key was matched against
    `ANIMUS_CHECKPOINT_VERIFY_KEY` when the settings loaded; a generated one
    is matched here.

    Raises:
        ConfigurationError: production without a key, a key that does
            not load (naming the setting or the file), or a generated key
            that is not the pair of ANIMUS_CHECKPOINT_VERIFY_KEY.
    """
    if settings.checkpoint_signing_key is not None:
        try:
            return parse_signing_key(settings.checkpoint_signing_key.get_secret_value())
        except ValueError as exc:
            raise ConfigurationError(f"{SETTING}: {exc}") from None
    if settings.environment == "production":
        raise ConfigurationError(
            f"{SETTING}: required when ANIMUS_ENVIRONMENT is production (the "
            "base64 of a 32-byte Ed25519 seed, or the path of a PEM file)"
        )
    path = dev_key_path(settings)
    if not path.exists():
        if not create:
            return None
        _write_new_key(path)
    try:
        key = parse_signing_key(str(path))
    except ValueError as exc:
        raise ConfigurationError(f"{SETTING} unset, and the generated {exc}") from None
    configured = settings.checkpoint_verify_key
    if configured is not None and verifier_key(settings, key) != configured:
        raise ConfigurationError(
            f"{VERIFY_SETTING} does not match the key generated at {path} "
            f"({SETTING} unset): set {SETTING} to its pair, or unset "
            f"{VERIFY_SETTING}"
        )
    return key


def _write_new_key(path: Path) -> None:
    """Generate a key into `path` (0600); whoever links it first wins."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(scratch, path)  # fails if another process made one meanwhile
    except FileExistsError:
        pass
    finally:
        scratch.unlink()


def verifier(settings: Settings) -> VerifierKey | None:
    """The vkey that verifies this log's checkpoints, for verify-only processes.

    `ANIMUS_CHECKPOINT_VERIFY_KEY` when set (no signing key is read then);
    otherwise derived from the signing key. Returns None only in
    development, when neither is set and no key was generated yet.

    Raises:
        ConfigurationError: production with neither setting, or a signing
            key that does not load.
    """
    from animus.evidence.note import parse_vkey

    if settings.checkpoint_verify_key is not None:
        return parse_vkey(settings.checkpoint_verify_key)  # checked at load
    if settings.environment == "production" and settings.checkpoint_signing_key is None:
        raise ConfigurationError(
            f"{VERIFY_SETTING}: required when ANIMUS_ENVIRONMENT is production "
            f"and {SETTING} is unset (the vkey that `animus evidence key` "
            "prints where the signing key is)"
        )
    key = signing_key(settings)
    return None if key is None else parse_vkey(verifier_key(settings, key))


def verifier_key(settings: Settings, key: Ed25519PrivateKey) -> str:
    """The vkey text of `key` under the configured origin."""
    from animus.evidence.note import vkey_of

    return vkey_of(key.public_key(), settings.checkpoint_origin)
