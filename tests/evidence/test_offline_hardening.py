"""What a new user's audit found in the bundle verifier and exporter, one
test per finding: an unpinned or empty key must not pass, every member's
bytes are rebuilt from what is proven (not only hashed by the manifest),
inputs that are not regular files or are too large are refused at once, a
bad --key says what is wrong with it, --output naming a directory is one
plain line, and a changed header is located in that header."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from offlinetest import ORIGIN, VKEY, demo_log, make_bundle

from animus.cli import main
from animus.errors import ConfigurationError
from animus.evidence import bundle as layout
from animus.evidence.note import sign_checkpoint, vkey_of
from animus.evidence.offline import (
    VerificationFailure,
    load_key,
    read_archive,
    verify_bundle,
)

KEY = load_key(VKEY)


@pytest.fixture(scope="module")
def bundle() -> bytes:
    log, run_id = demo_log()
    return make_bundle(log, run_id)


@pytest.fixture
def bundle_file(bundle: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "run.tar"
    path.write_bytes(bundle)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def rehashed(members: dict[str, bytes]) -> bytes:
    """The archive of `members` with the manifest's member list recomputed,
    as a forger who knows the layout would write it."""
    manifest = json.loads(members[layout.MANIFEST_MEMBER])
    manifest["members"] = [
        {
            "name": name,
            "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content),
        }
        for name, content in sorted(members.items())
        if name != layout.MANIFEST_MEMBER
    ]
    members = {**members, layout.MANIFEST_MEMBER: layout.render_json(manifest)}
    return layout.write_archive(members)


def failure(data: bytes, key: Any = KEY) -> VerificationFailure:
    with pytest.raises(VerificationFailure) as caught:
        verify_bundle(data, key=key)
    return caught.value


class TestPinnedKey:
    """Finding 1: an empty --key or no --key must not verify a re-signed bundle."""

    def test_an_empty_key_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str], bundle_file: Path
    ) -> None:
        code, out, err = run(
            capsys, "evidence", "verify", str(bundle_file), "--key", ""
        )
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1
        assert "--key is empty" in err

    def test_without_a_key_verification_is_refused(
        self, capsys: pytest.CaptureFixture[str], bundle_file: Path
    ) -> None:
        code, out, err = run(capsys, "evidence", "verify", str(bundle_file))
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1
        assert "--key" in err and "--trust-bundle-key" in err

    def test_a_bundle_resigned_with_another_key_fails_under_the_pinned_key(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        log, run_id = demo_log()
        evil = Ed25519PrivateKey.generate()
        members = read_archive(make_bundle(log, run_id))
        members[layout.CHECKPOINT_MEMBER] = log.checkpoint(key=evil).encode()
        members[layout.KEY_MEMBER] = (
            vkey_of(evil.public_key(), ORIGIN) + "\n"
        ).encode()
        path = tmp_path / "evil.tar"
        path.write_bytes(rehashed(members))
        code, out, _ = run(capsys, "evidence", "verify", str(path), "--key", VKEY)
        assert code == 1
        assert out.startswith("verification failed: key, key.vkey")

    def test_trusting_the_bundle_key_names_it_prominently(
        self, capsys: pytest.CaptureFixture[str], bundle_file: Path
    ) -> None:
        code, out, err = run(
            capsys, "evidence", "verify", str(bundle_file), "--trust-bundle-key"
        )
        assert code == 0
        assert out.startswith("bundle verified: ")
        assert "NOT PINNED" in err
        assert KEY.key_id in err and KEY.key_id in out


class TestEveryMemberIsRebuilt:
    """Finding 2: a member changed and rehashed in the manifest must fail."""

    def test_an_extra_member_in_an_event_record_fails(self, bundle: bytes) -> None:
        members = read_archive(bundle)
        lines = members[layout.EVENTS_MEMBER].splitlines(keepends=True)
        record = json.loads(lines[2])
        record["approved_by"] = "CEO"
        lines[2] = layout.render_json(record)
        members[layout.EVENTS_MEMBER] = b"".join(lines)
        caught = failure(rehashed(members))
        assert caught.check == "chain record"
        assert caught.member == layout.EVENTS_MEMBER
        assert caught.position == record["position"]

    def test_events_written_as_json_with_spaces_fail(self, bundle: bytes) -> None:
        members = read_archive(bundle)
        lines = members[layout.EVENTS_MEMBER].splitlines()
        members[layout.EVENTS_MEMBER] = b"".join(
            json.dumps(json.loads(line)).encode() + b"\n" for line in lines
        )
        caught = failure(rehashed(members))
        assert caught.check == "chain record"
        assert "RFC 8785" in caught.reason

    def test_proofs_written_as_json_with_spaces_fail(self, bundle: bytes) -> None:
        members = read_archive(bundle)
        lines = members[layout.PROOFS_MEMBER].splitlines()
        members[layout.PROOFS_MEMBER] = b"".join(
            json.dumps(json.loads(line)).encode() + b"\n" for line in lines
        )
        assert failure(rehashed(members)).check == "inclusion proof"

    def test_another_key_in_key_vkey_fails_when_a_key_is_pinned(
        self, bundle: bytes
    ) -> None:
        members = read_archive(bundle)
        other = vkey_of(Ed25519PrivateKey.generate().public_key(), ORIGIN)
        members[layout.KEY_MEMBER] = (other + "\n").encode()
        caught = failure(rehashed(members))
        assert (caught.check, caught.member) == ("key", layout.KEY_MEMBER)
        assert "not the pinned key" in caught.reason

    @pytest.mark.parametrize(
        "text", [VKEY.encode(), VKEY.encode() + b"\n\n", b" " + VKEY.encode() + b"\n"]
    )
    def test_key_vkey_must_be_exactly_the_key_and_one_newline(
        self, bundle: bytes, text: bytes
    ) -> None:
        members = read_archive(bundle)
        members[layout.KEY_MEMBER] = text
        data = rehashed(members)
        assert failure(data).member == layout.KEY_MEMBER
        with pytest.raises(VerificationFailure) as caught:
            verify_bundle(data, key=None, trust_bundle_key=True)
        assert caught.value.member == layout.KEY_MEMBER

    def test_a_checkpoint_with_an_added_signature_line_fails(
        self, bundle: bytes
    ) -> None:
        log, _ = demo_log()
        members = read_archive(bundle)
        other = Ed25519PrivateKey.generate()
        cosigned = sign_checkpoint(
            other,
            ORIGIN,
            len(log.records),
            bytes(32),
            bytes(32),
        ).split("\n\n")[1]
        members[layout.CHECKPOINT_MEMBER] += cosigned.encode()
        caught = failure(rehashed(members))
        assert (caught.check, caught.member) == ("checkpoint", "checkpoint.note")


class TestInputs:
    """Finding 3: no unbounded reads, no reads that never end."""

    def test_a_device_is_refused_at_once(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = run(capsys, "evidence", "verify", "/dev/zero", "--key", VKEY)
        assert code == 1
        assert out == "verification failed: input, /dev/zero: not a regular file\n"

    def test_a_key_that_is_a_device_is_refused_at_once(
        self, capsys: pytest.CaptureFixture[str], bundle_file: Path
    ) -> None:
        code, _, err = run(
            capsys, "evidence", "verify", str(bundle_file), "--key", "/dev/urandom"
        )
        assert code == 2
        assert err.count("\n") == 1
        assert "/dev/urandom: not a regular file" in err

    def test_a_fifo_is_refused_without_blocking(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        code, out, _ = run(capsys, "evidence", "verify", str(fifo), "--key", VKEY)
        assert (code, out) == (
            1,
            f"verification failed: input, {fifo}: not a regular file\n",
        )

    def test_a_bundle_over_the_size_cap_is_refused(
        self, capsys: pytest.CaptureFixture[str], bundle_file: Path
    ) -> None:
        code, out, _ = run(
            capsys,
            "evidence",
            "verify",
            str(bundle_file),
            "--key",
            VKEY,
            "--max-bytes",
            "10240",
        )
        assert code == 1
        assert out.startswith(f"verification failed: input, {bundle_file}: ")
        assert "larger than --max-bytes 10240" in out

    def test_a_key_file_over_a_few_kilobytes_is_refused(
        self, capsys: pytest.CaptureFixture[str], bundle_file: Path, tmp_path: Path
    ) -> None:
        big = tmp_path / "big.vkey"
        big.write_text(VKEY + "\n" + " " * 10_000)
        code, _, err = run(
            capsys, "evidence", "verify", str(bundle_file), "--key", str(big)
        )
        assert code == 2
        assert "larger than" in err and err.count("\n") == 1


class TestKeyArgument:
    """Finding 5: say what is wrong with --key; accept a file or text alike."""

    def test_garbage_is_neither_a_file_nor_a_vkey(
        self, capsys: pytest.CaptureFixture[str], bundle_file: Path
    ) -> None:
        code, out, err = run(
            capsys, "evidence", "verify", str(bundle_file), "--key", "garbage"
        )
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1
        assert "no file of that name" in err
        assert "not a vkey" in err and "three parts" in err

    def test_a_vkey_with_a_wrong_key_id_says_so(
        self, capsys: pytest.CaptureFixture[str], bundle_file: Path
    ) -> None:
        name, key_id, key = VKEY.split("+", 2)
        wrong = f"{name}+{'0' * 8}+{key}"
        code, _, err = run(
            capsys, "evidence", "verify", str(bundle_file), "--key", wrong
        )
        assert code == 2
        assert "key hash does not match" in err

    def test_a_file_and_the_text_give_the_same_key(self, tmp_path: Path) -> None:
        from animus.evidence.offline import key_option

        path = tmp_path / "log.vkey"
        path.write_text(VKEY + "\n")
        assert key_option(str(path)) == key_option(VKEY) == KEY

    def test_animus_verify_takes_a_key_file_and_checks_it_before_the_chain(
        self,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        import animus.verify

        def walk(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the chain was walked before the key was checked")

        monkeypatch.setattr(animus.verify, "verify_chain", walk)
        monkeypatch.setenv("ANIMUS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/x")
        code, _, err = run(capsys, "verify", "--key", "garbage")
        assert code == 2
        assert "--key" in err and "not a vkey" in err

        from animus.evidence.audit import parse_key_option

        path = tmp_path / "log.vkey"
        path.write_text(VKEY + "\n")
        assert parse_key_option(str(path)) == KEY


class TestExportOutput:
    """Finding 4: --output that cannot be written is one line, nothing half done."""

    def test_a_directory_is_one_plain_line(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        code, out, err = run(
            capsys, "evidence", "export", "--run", "r-1", "--output", f"{tmp_path}/"
        )
        assert code == 2
        assert err == f"animus: --output: cannot write {tmp_path}/: Is a directory\n"

    def test_a_failed_write_leaves_nothing_behind(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        from animus.evidence import export

        def refuse(*args: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(export.os, "replace", refuse)
        target = tmp_path / "run.tar"
        with pytest.raises(ConfigurationError) as caught:
            export.write_bundle(target, b"x" * 1000)
        assert caught.value.detail == (
            f"--output: cannot write {target}: No space left on device"
        )
        assert list(tmp_path.iterdir()) == []


class TestHeaderLocation:
    """Finding 6: a changed byte in a later member's header is located there."""

    def test_every_header_byte_is_located_in_its_own_header(
        self, bundle: bytes
    ) -> None:
        import io

        with tarfile.open(fileobj=io.BytesIO(bundle)) as archive:
            headers = [(m.name, m.offset) for m in archive.getmembers()]
        for name, start in headers:
            for index in range(start, start + 512):
                changed = bytearray(bundle)
                changed[index] ^= 0x01
                caught = failure(bytes(changed))
                assert caught.check == "archive", (index, str(caught))
                assert "in the header of " in caught.reason, (index, str(caught))
                if index - start >= 100:  # past the name field
                    assert f"in the header of {name}" in caught.reason, index
                # the changed byte itself, unless the name, the size or the
                # checksum now reads as another valid one: then it is ambiguous
                if f"byte {index} differs" not in caught.reason:
                    field = index - start
                    assert field < 100 or 124 <= field < 136 or 148 <= field < 156
                    assert caught.reason.endswith(
                        "its name, size or checksum was changed"
                    ), (index, str(caught))

    def test_a_changed_header_byte_is_named(self, bundle: bytes) -> None:
        members = read_archive(bundle)
        second = sorted(members)[1]
        start = 512 + -(-len(members[sorted(members)[0]]) // 512) * 512
        changed = bytearray(bundle)
        changed[start + 300] ^= 0x01  # inside the ustar magic/uname area
        caught = failure(bytes(changed))
        assert caught.reason == (
            f"not in the canonical layout: byte {start + 300} differs, "
            f"in the header of {second}"
        )
