"""Signed notes and checkpoints against the Go sumdb note format's own vectors."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from animus.evidence.note import (
    NoteError,
    key_hash,
    open_note,
    parse_signer_key,
    parse_vkey,
    sign_checkpoint,
    sign_note,
    signer_key_of,
    verify_checkpoint,
    vkey_of,
)

# Vectors of golang.org/x/mod/sumdb/note's tests.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = (
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
)
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8p"
    "AcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp"
    "+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

ORIGIN = "animus.test/log"
ROOT = hashlib.sha256(b"root").digest()
HEAD = hashlib.sha256(b"head").digest()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


class TestGoVectors:
    def test_the_go_signer_key_parses_to_the_go_verifier_key(self) -> None:
        name, private_key = parse_signer_key(GO_SKEY)
        assert name == "PeterNeumann"
        assert vkey_of(private_key.public_key(), name) == GO_VKEY
        assert signer_key_of(private_key, name) == GO_SKEY

    def test_the_key_hash_is_sha256_of_name_newline_alg_key(self) -> None:
        key = parse_vkey(GO_VKEY)
        raw = base64.b64decode(GO_VKEY.split("+")[2])
        expected = hashlib.sha256(b"PeterNeumann\n" + raw).digest()[:4]
        assert key_hash("PeterNeumann", key.public_key) == expected
        assert key.key_id == "c74f20a3"

    def test_signing_the_go_text_gives_the_go_note_byte_for_byte(self) -> None:
        name, private_key = parse_signer_key(GO_SKEY)
        assert sign_note(private_key, name, GO_TEXT) == GO_NOTE

    def test_the_go_note_opens_with_the_go_key(self) -> None:
        assert open_note(GO_NOTE, GO_VKEY) == GO_TEXT

    def test_signatures_by_other_keys_are_ignored(self) -> None:
        assert open_note(GO_NOTE + ENOCH_SIG, GO_VKEY) == GO_TEXT

    def test_a_note_signed_only_by_another_key_is_an_unknown_key(self) -> None:
        with pytest.raises(NoteError) as caught:
            open_note(GO_TEXT + "\n" + ENOCH_SIG, GO_VKEY)
        assert caught.value.reason == "unknown key"
        assert "EnochRoot+af0cfe78" in str(caught.value)

    @pytest.mark.parametrize(
        "note",
        [
            GO_TEXT,
            GO_TEXT + "\n",
            GO_NOTE[:-1],
            "\x01" + GO_NOTE,
            GO_NOTE + "Unexpected line.\n",
            GO_NOTE.replace("PeterNeumann x", "Peter Neumann x"),
            GO_TEXT + "\n" + (GO_NOTE[len(GO_TEXT) + 1 :] * 101),
        ],
        ids=["no-sigs", "blank", "no-final-newline", "control", "extra-line",
             "bad-name", "too-many"],
    )
    def test_malformed_notes_are_refused_as_malformed(self, note: str) -> None:
        with pytest.raises(NoteError) as caught:
            open_note(note, GO_VKEY)
        assert caught.value.reason == "malformed"

    def test_a_changed_signature_is_a_bad_signature(self) -> None:
        tampered = GO_NOTE.replace("x08go/ZJkuBS9UG", "x08go/ZJkuBS9UH")
        with pytest.raises(NoteError) as caught:
            open_note(tampered, GO_VKEY)
        assert caught.value.reason == "bad signature"

    def test_a_changed_text_is_a_bad_signature(self) -> None:
        with pytest.raises(NoteError) as caught:
            open_note(GO_NOTE.replace("answer", "Answer"), GO_VKEY)
        assert caught.value.reason == "bad signature"

    @pytest.mark.parametrize(
        "vkey",
        [
            GO_VKEY[:-1],
            GO_VKEY.replace("c74f20a3", "c74f20a4"),
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            GO_VKEY.replace("Peter", "Paul"),
            "PeterNeumann+c74f20a3",
        ],
    )
    def test_mangled_vkeys_are_refused(self, vkey: str) -> None:
        with pytest.raises(NoteError) as caught:
            parse_vkey(vkey)
        assert caught.value.reason == "malformed"


class TestCheckpoint:
    def test_a_signed_checkpoint_verifies_and_says_what_was_signed(
        self, key: Ed25519PrivateKey
    ) -> None:
        vkey = vkey_of(key.public_key(), ORIGIN)
        note = sign_checkpoint(key, ORIGIN, 42, ROOT, HEAD.hex())
        checkpoint = verify_checkpoint(note, vkey)
        assert checkpoint.origin == ORIGIN
        assert checkpoint.tree_size == 42
        assert checkpoint.root_hash == ROOT
        assert checkpoint.chain_head == HEAD
        assert checkpoint.key_id == vkey.split("+")[1]

    def test_the_note_has_the_tlog_checkpoint_layout(
        self, key: Ed25519PrivateKey
    ) -> None:
        note = sign_checkpoint(key, ORIGIN, 42, ROOT, HEAD)
        body, _, signature = note.partition("\n\n")
        assert body.split("\n") == [
            ORIGIN,
            "42",
            base64.b64encode(ROOT).decode(),
            f"animus-chain-head {HEAD.hex()}",
        ]
        assert signature.startswith(f"\u2014 {ORIGIN} ")
        blob = base64.b64decode(signature.split(" ")[2])
        assert blob[:4] == key_hash(ORIGIN, key.public_key())
        key.public_key().verify(blob[4:], (body + "\n").encode())

    def test_a_checkpoint_for_another_origin_is_the_wrong_origin(
        self, key: Ed25519PrivateKey
    ) -> None:
        other = Ed25519PrivateKey.from_private_bytes(bytes(32))
        note = sign_checkpoint(other, "animus.other/log", 1, ROOT, HEAD)
        with pytest.raises(NoteError) as caught:
            verify_checkpoint(note, vkey_of(key.public_key(), ORIGIN))
        assert caught.value.reason == "wrong origin"

    def test_a_checkpoint_signed_by_another_key_is_an_unknown_key(
        self, key: Ed25519PrivateKey
    ) -> None:
        other = Ed25519PrivateKey.from_private_bytes(bytes(32))
        note = sign_checkpoint(other, ORIGIN, 1, ROOT, HEAD)
        with pytest.raises(NoteError) as caught:
            verify_checkpoint(note, vkey_of(key.public_key(), ORIGIN))
        assert caught.value.reason == "unknown key"

    def test_every_single_byte_flip_fails(self, key: Ed25519PrivateKey) -> None:
        vkey = vkey_of(key.public_key(), ORIGIN)
        note = sign_checkpoint(key, ORIGIN, 7, ROOT, HEAD).encode()
        for index in range(len(note)):
            for bit in (0x01, 0x20, 0x80):
                flipped = bytearray(note)
                flipped[index] ^= bit
                with pytest.raises(NoteError):
                    verify_checkpoint(bytes(flipped), vkey)

    @pytest.mark.parametrize(
        "body",
        [
            f"{ORIGIN}\n042\nROOT\nanimus-chain-head {HEAD.hex()}\n",
            f"{ORIGIN}\n42\nROOT\n",
            f"{ORIGIN}\n42\nROOT\nanimus-chain-head {HEAD.hex().upper()}\n",
            f"{ORIGIN}\n-1\nROOT\nanimus-chain-head {HEAD.hex()}\n",
            f"{ORIGIN}\n42\nROOT\nanimus-chain-head {HEAD.hex()}\nextra\n",
        ],
        ids=["leading-zero", "no-head", "upper-hex", "negative", "extra-line"],
    )
    def test_bodies_outside_the_format_are_malformed_even_when_signed(
        self, key: Ed25519PrivateKey, body: str
    ) -> None:
        body = body.replace("ROOT", base64.b64encode(ROOT).decode())
        note = sign_note(key, ORIGIN, body)
        with pytest.raises(NoteError) as caught:
            verify_checkpoint(note, vkey_of(key.public_key(), ORIGIN))
        assert caught.value.reason == "malformed"
