"""Signed notes and checkpoints: the C2SP signed-note and tlog-checkpoint formats.

A signed note (the format of golang.org/x/mod/sumdb/note) is a UTF-8 text,
then a blank line, then one line per signature:

    <text, every line ending in "\\n">
    \\n
    — <key name> <base64( keyhash4 || ed25519 signature64 )>\\n

The signature covers the text bytes, final newline included. `keyhash4` is
`sha256(name + "\\n" + 0x01 + public key32)[:4]`; its 8 hex digits are the
key id. A verifier key ("vkey") is `<name>+<keyhash hex>+<base64(0x01 ||
public key32)>`, and a signer key `PRIVATE+KEY+<name>+<keyhash hex>+
<base64(0x01 || seed32)>`.

A checkpoint is a note whose text is a tlog-checkpoint (C2SP) with one
extension line, and whose key name is its origin:

    <origin>\\n<tree size>\\n<base64 root hash>\\nanimus-chain-head <64 hex>\\n

Everything here is pure: it imports the standard library and `cryptography`
only, so the offline verifier can use it. See contracts/evidence.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "CHAIN_HEAD_PREFIX",
    "Checkpoint",
    "NoteError",
    "VerifierKey",
    "format_checkpoint_body",
    "key_hash",
    "open_note",
    "parse_checkpoint_body",
    "parse_signer_key",
    "parse_vkey",
    "sign_checkpoint",
    "sign_note",
    "signer_key_of",
    "verify_checkpoint",
    "vkey_of",
]

ALG_ED25519 = 0x01
CHAIN_HEAD_PREFIX = "animus-chain-head "
MAX_SIGNATURES = 100
_SIG_PREFIX = "\u2014 "  # em dash and a space
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX8 = re.compile(r"[0-9a-f]{8}")

Reason = Literal["malformed", "unknown key", "bad signature", "wrong origin"]


class NoteError(Exception):
    """A note or key does not parse or verify; `reason` says which of four ways.

    `reason` is one of "malformed", "unknown key", "bad signature" and
    "wrong origin"; the message says what exactly.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A parsed vkey: the key's name, its 4-byte hash and the Ed25519 key."""

    name: str
    key_hash: bytes
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return self.key_hash.hex()

    def __str__(self) -> str:
        return vkey_of(self.public_key, self.name)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified checkpoint: the tree head over positions 1..tree_size.

    `root_hash` and `chain_head` are the raw 32-byte digests; `chain_head` is
    the chain hash of event `tree_size`. `key_id` names the key that signed.
    """

    origin: str
    tree_size: int
    root_hash: bytes
    chain_head: bytes
    key_id: str

    @property
    def root_hex(self) -> str:
        return self.root_hash.hex()

    @property
    def chain_head_hex(self) -> str:
        return self.chain_head.hex()


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64: the one encoding of its bytes, nothing else."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError("malformed", f"{what} is not base64") from None
    if _b64encode(raw) != text:
        raise NoteError("malformed", f"{what} is not canonical base64")
    return raw


def _raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise NoteError("malformed", f"key name {name!r} is empty or has + or spaces")
    if not name.isprintable():
        raise NoteError("malformed", f"key name {name!r} has control characters")


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key hash: sha256(name + "\\n" + 0x01 + public key)[:4]."""
    material = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519])
    return hashlib.sha256(material + _raw_public_key(public_key)).digest()[:4]


def vkey_of(public_key: Ed25519PublicKey, name: str) -> str:
    """The verifier key text `<name>+<keyhash hex>+<base64(0x01 || key)>`."""
    _check_name(name)
    encoded = _b64encode(bytes([ALG_ED25519]) + _raw_public_key(public_key))
    return f"{name}+{key_hash(name, public_key).hex()}+{encoded}"


def parse_vkey(text: str) -> VerifierKey:
    """Parse a vkey; its key hash must match its name and key.

    Raises:
        NoteError: (malformed) the text is not a valid Ed25519 vkey.
    """
    parts = text.strip().split("+", 2)  # base64 may hold "+" too
    if len(parts) != 3:
        raise NoteError("malformed", "a vkey has three parts: name+keyhash+key")
    name, hash_hex, encoded = parts
    _check_name(name)
    if not _HEX8.fullmatch(hash_hex):
        raise NoteError("malformed", "the vkey's key hash is not 8 lower-case hex")
    raw = _b64decode(encoded, "the vkey's key")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("malformed", "the vkey is not an Ed25519 key (0x01 + 32)")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if key_hash(name, public_key).hex() != hash_hex:
        raise NoteError("malformed", "the vkey's key hash does not match its key")
    return VerifierKey(
        name=name, key_hash=bytes.fromhex(hash_hex), public_key=public_key
    )


def signer_key_of(private_key: Ed25519PrivateKey, name: str) -> str:
    """The signer key text `PRIVATE+KEY+<name>+<keyhash>+<base64(0x01||seed)>`."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    _check_name(name)
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    hash_hex = key_hash(name, private_key.public_key()).hex()
    return f"PRIVATE+KEY+{name}+{hash_hex}+{_b64encode(bytes([ALG_ED25519]) + seed)}"


def parse_signer_key(text: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse a signer key into its name and private key.

    Raises:
        NoteError: (malformed) the text is not a valid Ed25519 signer key.
    """
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise NoteError("malformed", "a signer key is PRIVATE+KEY+name+keyhash+key")
    name, hash_hex, encoded = parts[2:]
    _check_name(name)
    raw = _b64decode(encoded, "the signer key")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("malformed", "the signer key is not an Ed25519 seed")
    private_key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    if key_hash(name, private_key.public_key()).hex() != hash_hex:
        raise NoteError("malformed", "the signer key's hash does not match its key")
    return name, private_key


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("malformed", "the note text does not end with a newline")
    if any((c < " " and c != "\n") or c == "\x7f" for c in text):
        raise NoteError("malformed", "the note has control characters")


def sign_note(private_key: Ed25519PrivateKey, name: str, text: str) -> str:
    """Sign `text` (lines ending in "\\n") as key `name`; return the note.

    Raises:
        NoteError: (malformed) the text or the name cannot form a note.
    """
    _check_name(name)
    _check_text(text)
    if "\n\n" in text or text.startswith("\n"):
        raise NoteError("malformed", "the note text has a blank line")
    signature = private_key.sign(text.encode("utf-8"))
    blob = key_hash(name, private_key.public_key()) + signature
    return f"{text}\n{_SIG_PREFIX}{name} {_b64encode(blob)}\n"


def open_note(note: str | bytes, vkey: str | VerifierKey) -> str:
    """Check a note's signature by `vkey` and return its text.

    Signatures by other keys are allowed and ignored; the one by `vkey`
    must be there and must verify.

    Raises:
        NoteError: malformed, unknown key (no signature by this key) or bad
            signature.
    """
    key = vkey if isinstance(vkey, VerifierKey) else parse_vkey(vkey)
    text, signatures = _split_note(note)
    found = False
    for name, blob in signatures:
        if name != key.name or blob[:4] != key.key_hash:
            continue
        found = True
        try:
            key.public_key.verify(blob[4:], text.encode("utf-8"))
        except InvalidSignature:
            raise NoteError(
                "bad signature",
                f"the signature by key {key.name}+{key.key_id} does not verify",
            ) from None
    if not found:
        signers = ", ".join(f"{n}+{b[:4].hex()}" for n, b in signatures)
        raise NoteError(
            "unknown key",
            f"no signature by key {key.name}+{key.key_id} (signed by {signers})",
        )
    return text


def _split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """Split a note into its text and (name, keyhash4 || signature) pairs."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("malformed", "the note is not UTF-8") from None
    _check_text(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed", "the note has no blank line before signatures")
    text, lines = note[: split + 1], note[split + 2 :].splitlines(keepends=True)
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("malformed", "the note has too many signatures")
    signatures = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX) or not line.endswith("\n"):
            raise NoteError("malformed", "a signature line is not '— name signature'")
        name, _, encoded = line[len(_SIG_PREFIX) : -1].partition(" ")
        _check_name(name)
        blob = _b64decode(encoded, "a signature")
        if len(blob) < 5:
            raise NoteError("malformed", "a signature is too short")
        signatures.append((name, blob))
    if not signatures:
        raise NoteError("malformed", "the note has no signature")
    return text, signatures


def _digest(value: bytes | str, what: str) -> bytes:
    raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(raw)}")
    return raw


def format_checkpoint_body(
    origin: str, tree_size: int, root_hash: bytes | str, chain_head: bytes | str
) -> str:
    """The checkpoint text that gets signed; digests as bytes or hex."""
    _check_name(origin)
    if tree_size < 0:
        raise ValueError("tree_size must not be negative")
    root = _b64encode(_digest(root_hash, "root_hash"))
    head = _digest(chain_head, "chain_head").hex()
    return f"{origin}\n{tree_size}\n{root}\n{CHAIN_HEAD_PREFIX}{head}\n"


def parse_checkpoint_body(text: str, key_id: str = "") -> Checkpoint:
    """Parse a checkpoint's text (unverified): the four lines, strictly.

    Raises:
        NoteError: (malformed) the text is not an animus checkpoint.
    """
    lines = text.split("\n")
    if len(lines) != 5 or lines[4] != "":
        raise NoteError("malformed", "a checkpoint has exactly four lines")
    origin, size, root, head_line = lines[:4]
    if not _DECIMAL.fullmatch(size):
        raise NoteError("malformed", "the tree size is not a decimal number")
    root_hash = _b64decode(root, "the root hash")
    if len(root_hash) != 32:
        raise NoteError("malformed", "the root hash is not 32 bytes")
    head_hex = head_line.removeprefix(CHAIN_HEAD_PREFIX)
    if head_hex == head_line or not _HEX64.fullmatch(head_hex):
        raise NoteError("malformed", "no 'animus-chain-head <64 hex>' line")
    return Checkpoint(
        origin=origin,
        tree_size=int(size),
        root_hash=root_hash,
        chain_head=bytes.fromhex(head_hex),
        key_id=key_id,
    )


def sign_checkpoint(
    private_key: Ed25519PrivateKey,
    origin: str,
    tree_size: int,
    root_hash: bytes | str,
    chain_head: bytes | str,
) -> str:
    """Sign a tree head as a checkpoint note; the key name is the origin.

    `root_hash` and `chain_head` are 32-byte digests, raw or as hex.
    """
    body = format_checkpoint_body(origin, tree_size, root_hash, chain_head)
    return sign_note(private_key, origin, body)


def verify_checkpoint(note: str | bytes, vkey: str | VerifierKey) -> Checkpoint:
    """Verify a checkpoint note against `vkey` and return what it says.

    Raises:
        NoteError: malformed (the note or its body), wrong origin (the
            checkpoint's origin is not the key's name), unknown key (no
            signature by this key) or bad signature.
    """
    key = vkey if isinstance(vkey, VerifierKey) else parse_vkey(vkey)
    text, _ = _split_note(note)
    checkpoint = parse_checkpoint_body(text, key.key_id)
    if checkpoint.origin != key.name:
        raise NoteError(
            "wrong origin",
            f"the checkpoint is for {checkpoint.origin!r}, the key for {key.name!r}",
        )
    open_note(note, key)
    return checkpoint
