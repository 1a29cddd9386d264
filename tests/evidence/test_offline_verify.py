"""The offline verifier on a synthetic log: segments, proofs, checkpoints and
bundles, each with the tampering it must catch and the reason it must give."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from offlinetest import VKEY, Log, demo_log, make_bundle

from animus.evidence import bundle as layout
from animus.evidence.note import verify_checkpoint
from animus.evidence.offline import (
    FileChecks,
    VerificationFailure,
    check_consistency,
    check_inclusion,
    check_segment,
    load_key,
    parse_consistency_proof,
    parse_inclusion_proof,
    parse_records,
    read_archive,
    verify_bundle,
)

KEY = load_key(VKEY)


def lines(records: list[dict[str, Any]]) -> bytes:
    return layout.ndjson(records)


@pytest.fixture(scope="module")
def log() -> Log:
    return demo_log(noise=40)[0]


class TestSegment:
    def test_a_whole_log_verifies_and_rebuilds_the_checkpoint_root(
        self, log: Log
    ) -> None:
        checkpoint = verify_checkpoint(log.checkpoint(30), VKEY)
        records = parse_records(lines(log.records))
        report = check_segment(records, checkpoints=[checkpoint])
        assert (report.first, report.last, report.events) == (1, 50, 50)
        assert report.root_checked

    def test_a_segment_from_the_middle_verifies_its_links(self, log: Log) -> None:
        report = check_segment(parse_records(lines(log.records[9:20])))
        assert (report.first, report.last) == (10, 20)
        assert not report.root_checked

    def test_a_changed_payload_breaks_the_hash_at_its_position(self, log: Log) -> None:
        records = [dict(r) for r in log.records[:10]]
        records[4]["canonical"] = records[4]["canonical"].replace("p1", "p2", 1)
        with pytest.raises(VerificationFailure) as caught:
            parse_records(lines(records))
        assert caught.value.position == 5
        assert (
            caught.value.reason == "hash does not match sha256(prev_hash || canonical)"
        )

    def test_a_deleted_event_is_a_gap_at_its_position(self, log: Log) -> None:
        records = log.records[:4] + log.records[5:10]
        with pytest.raises(VerificationFailure) as caught:
            check_segment(parse_records(lines(records)))
        assert caught.value.position == 6
        assert caught.value.reason == "position is not gap-free: missing 5"

    def test_swapped_events_fail_where_positions_go_back(self, log: Log) -> None:
        records = list(log.records[:10])
        records[3], records[4] = records[4], records[3]
        with pytest.raises(VerificationFailure) as caught:
            check_segment(parse_records(lines(records)))
        assert caught.value.position == 5
        assert "gap-free" in caught.value.reason

    def test_a_record_whose_field_lies_about_its_envelope_is_refused(
        self, log: Log
    ) -> None:
        record = dict(log.records[3], type="RunSucceeded")
        with pytest.raises(VerificationFailure) as caught:
            parse_records(lines([record]))
        assert caught.value.position == 4
        assert caught.value.reason == (
            "the record's type differs from the canonical envelope's"
        )

    def test_a_consistently_rewritten_tail_is_caught_by_the_checkpoint(
        self, log: Log
    ) -> None:
        checkpoint = verify_checkpoint(log.checkpoint(30), VKEY)
        forged = Log()
        for record in log.records[:19]:
            forged.records.append(record)
        for record in log.records[19:30]:
            envelope = json.loads(record["canonical"])
            forged.append(
                record["stream_type"],
                record["stream_id"],
                record["type"],
                {**envelope["data"], "forged": True},
                record["project_id"],
            )
        with pytest.raises(VerificationFailure) as caught:
            check_segment(
                parse_records(lines(forged.records)), checkpoints=[checkpoint]
            )
        assert caught.value.position == 30
        assert (
            caught.value.reason == "the hash differs from the checkpoint's chain head"
        )

    def test_sparse_segments_check_links_only_where_positions_touch(
        self, log: Log
    ) -> None:
        records = log.records[:3] + log.records[10:12]
        report = check_segment(parse_records(lines(records)), contiguous=False)
        assert report.events == 5


class TestProofs:
    @pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 31, 50])
    def test_every_leaf_of_a_tree_proves_against_its_checkpoint(
        self, log: Log, size: int
    ) -> None:
        checkpoint = verify_checkpoint(log.checkpoint(size), VKEY)
        for position in range(1, size + 1):
            proof = parse_inclusion_proof(log.inclusion(position, size))
            canonical = log.records[position - 1]["canonical"].encode()
            check_inclusion(proof, checkpoint, canonical=canonical)

    def test_a_proof_of_other_bytes_fails_on_the_leaf_hash(self, log: Log) -> None:
        checkpoint = verify_checkpoint(log.checkpoint(), VKEY)
        proof = parse_inclusion_proof(log.inclusion(7))
        with pytest.raises(VerificationFailure) as caught:
            check_inclusion(proof, checkpoint, canonical=b"{}")
        assert caught.value.position == 7
        assert "leaf_hash" in caught.value.reason

    def test_a_changed_path_node_fails(self, log: Log) -> None:
        checkpoint = verify_checkpoint(log.checkpoint(), VKEY)
        value = log.inclusion(7)
        value["path"][2] = "0" * 64
        with pytest.raises(VerificationFailure) as caught:
            check_inclusion(parse_inclusion_proof(value), checkpoint)
        assert caught.value.reason == (
            "the path does not lead from the leaf to the root hash"
        )

    def test_a_proof_for_another_tree_size_is_refused(self, log: Log) -> None:
        checkpoint = verify_checkpoint(log.checkpoint(40), VKEY)
        with pytest.raises(VerificationFailure) as caught:
            check_inclusion(parse_inclusion_proof(log.inclusion(7, 41)), checkpoint)
        assert "tree size 41" in caught.value.reason

    @pytest.mark.parametrize("first,second", [(1, 50), (7, 8), (8, 50), (13, 31)])
    def test_consistency_between_two_checkpoints_verifies(
        self, log: Log, first: int, second: int
    ) -> None:
        old = verify_checkpoint(log.checkpoint(first), VKEY)
        new = verify_checkpoint(log.checkpoint(second), VKEY)
        proof = parse_consistency_proof(log.consistency(first, second))
        check_consistency(proof, old, new)

    def test_a_forked_log_is_not_consistent_with_the_old_checkpoint(
        self, log: Log
    ) -> None:
        fork = Log(records=list(log.records[:12]), versions={})
        fork.append("project", "project-fork", "ProjectCreated", {"fork": True})
        old = verify_checkpoint(log.checkpoint(13), VKEY)
        new = verify_checkpoint(fork.checkpoint(13), VKEY)
        proof = parse_consistency_proof(log.consistency(13, 13))
        with pytest.raises(VerificationFailure):
            check_consistency(proof, old, new)

    def test_malformed_proof_json_names_the_field(self) -> None:
        with pytest.raises(VerificationFailure) as caught:
            parse_inclusion_proof({"format": "animus-inclusion-proof/v1"})
        assert caught.value.reason.startswith("$: ")


class TestFiles:
    def test_checkpoint_proof_segment_and_consistency_files_verify(
        self, log: Log, tmp_path: Path
    ) -> None:
        (tmp_path / "old.note").write_text(log.checkpoint(20))
        (tmp_path / "new.note").write_text(log.checkpoint(50))
        (tmp_path / "p.json").write_text(json.dumps(log.inclusion(9)))
        (tmp_path / "c.json").write_text(json.dumps(log.consistency(20, 50)))
        (tmp_path / "s.ndjson").write_bytes(lines(log.records))
        (tmp_path / "key.vkey").write_text(VKEY + "\n")
        checks = FileChecks(
            key=str(tmp_path / "key.vkey"),
            checkpoints=[str(tmp_path / "old.note"), str(tmp_path / "new.note")],
            proofs=[str(tmp_path / "p.json")],
            segments=[str(tmp_path / "s.ndjson")],
            consistency=[str(tmp_path / "c.json")],
        )
        summary = checks.run()
        assert any("root rebuilt" in line for line in summary)
        assert len(summary) == 5

    def test_a_proof_needs_the_checkpoint_of_its_tree_size(
        self, log: Log, tmp_path: Path
    ) -> None:
        (tmp_path / "new.note").write_text(log.checkpoint(50))
        (tmp_path / "p.json").write_text(json.dumps(log.inclusion(9, 20)))
        checks = FileChecks(
            key=VKEY,
            checkpoints=[str(tmp_path / "new.note")],
            proofs=[str(tmp_path / "p.json")],
        )
        with pytest.raises(VerificationFailure) as caught:
            checks.run()
        assert caught.value.reason == "no --checkpoint of tree size 20 was given"

    def test_a_checkpoint_signed_by_another_key_fails(
        self, log: Log, tmp_path: Path
    ) -> None:
        other = Ed25519PrivateKey.from_private_bytes(bytes(32))
        (tmp_path / "n.note").write_text(log.checkpoint(50, key=other))
        with pytest.raises(VerificationFailure) as caught:
            FileChecks(key=VKEY, checkpoints=[str(tmp_path / "n.note")]).run()
        assert caught.value.check == "checkpoint"
        assert caught.value.reason.startswith("unknown key")


def flip(data: bytes, index: int, bit: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= bit
    return bytes(changed)


@pytest.fixture(scope="module")
def bundle() -> tuple[bytes, str]:
    log, run_id = demo_log()
    return make_bundle(log, run_id), run_id


class TestSyntheticBundle:
    """The fast half of the bundle tests; the demo run's bundle is in
    test_bundle_demo.py. This one flips every byte of the whole archive."""

    def test_the_bundle_as_written_verifies(self, bundle: tuple[bytes, str]) -> None:
        data, run_id = bundle
        report = verify_bundle(data, key=KEY)
        assert report.run_id == run_id
        assert report.status == "succeeded"
        assert (report.events, report.artifacts) == (7, 2)
        assert report.key_pinned

    def test_the_archive_is_a_plain_sorted_tar(self, bundle: tuple[bytes, str]) -> None:
        import io

        with tarfile.open(fileobj=io.BytesIO(bundle[0])) as archive:
            members = archive.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert names[-4:] == [
            "events.ndjson",
            "key.vkey",
            "manifest.json",
            "proofs.ndjson",
        ]
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0, 0o644)}

    def test_flipping_any_single_byte_fails(self, bundle: tuple[bytes, str]) -> None:
        """Every byte of every member's header and content, one bit each, and
        every 16th byte of the end-of-archive zeros (about 11,000 checks)."""
        data = bundle[0]
        end = len(data.rstrip(b"\0")) + 1024
        sample = [*range(end), *range(end, len(data), 16)]
        passed = [i for i in sample if _verifies(flip(data, i))]
        assert passed == []

    def test_a_manifest_claim_changed_and_rehashed_still_fails(
        self, bundle: tuple[bytes, str]
    ) -> None:
        members = read_archive(bundle[0])
        manifest = json.loads(members["manifest.json"])
        manifest["run"]["plan_hash"] = "0" * 64
        members["manifest.json"] = layout.render_json(manifest)
        with pytest.raises(VerificationFailure) as caught:
            verify_bundle(layout.write_archive(members), key=KEY)
        assert caught.value.check == "manifest claims"
        assert caught.value.reason.startswith("run differs")

    def test_changed_artifact_bytes_with_a_rehashed_manifest_fail(
        self, bundle: tuple[bytes, str]
    ) -> None:
        members = read_archive(bundle[0])
        name = next(n for n in members if n.startswith("artifacts/"))
        members[name] = members[name][:-1] + b"X"
        manifest = json.loads(members["manifest.json"])
        for entry in manifest["members"]:
            if entry["name"] == name:
                import hashlib

                entry["sha256"] = hashlib.sha256(members[name]).hexdigest()
        members["manifest.json"] = layout.render_json(manifest)
        with pytest.raises(VerificationFailure) as caught:
            verify_bundle(layout.write_archive(members), key=KEY)
        assert caught.value.member == name

    def test_a_bundle_without_artifact_content_verifies(self) -> None:
        log, run_id = demo_log()
        report = verify_bundle(make_bundle(log, run_id, content=False), key=KEY)
        assert report.artifact_bytes == 0

    def test_an_event_left_out_of_the_run_stream_fails(self) -> None:
        log, run_id = demo_log()
        members = read_archive(make_bundle(log, run_id))
        kept = members["events.ndjson"].splitlines(keepends=True)
        proofs = members["proofs.ndjson"].splitlines(keepends=True)
        del kept[3], proofs[3]
        members["events.ndjson"] = b"".join(kept)
        members["proofs.ndjson"] = b"".join(proofs)
        with pytest.raises(VerificationFailure) as caught:
            verify_bundle(layout.write_archive(members), key=KEY)
        assert caught.value.check == "member hash"


def _verifies(data: bytes) -> bool:
    try:
        verify_bundle(data, key=KEY)
    except VerificationFailure:
        return False
    return True
