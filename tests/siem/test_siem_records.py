"""SIEM records from a real log: they validate against the published schema,
and the subscriber's checker accepts them as they are and names the position
and reason of a dropped, changed, relinked or reordered record."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from siemtest import append_dataset, append_projects, check_schema

from animus.eventstore import EventStore
from animus.siem import FORMAT, ChainChecker, Finding
from animus.siem.stream import read_records
from contracts.bus import PLATFORM_TOKEN, audit_filter, audit_subject


@pytest.fixture(scope="module")
async def records(store: EventStore, pool: AsyncConnectionPool) -> list[dict[str, Any]]:
    """Positions 1..12: ten projects, then two datasets of the first one."""
    created = await append_projects(store, 10)
    await append_dataset(store, created[0].project_id or "")
    await append_dataset(store, created[0].project_id or "")
    async with pool.connection() as conn:
        found = await read_records(conn, after=0, limit=100)
    return [item.record for item in found]


def check_all(records: list[dict[str, Any]], **options: Any) -> list[Finding]:
    checker = ChainChecker(**options)
    return [finding for record in records for finding in checker.check(record)]


class TestRecordFormat:
    def test_every_record_validates_against_the_schema(
        self, records: list[dict[str, Any]]
    ) -> None:
        assert [r["position"] for r in records] == list(range(1, 13))
        for record in records:
            check_schema(record)
            assert record["format"] == FORMAT

    def test_a_record_carries_the_stored_canonical_text_and_its_decoded_payload(
        self, records: list[dict[str, Any]]
    ) -> None:
        record = records[0]
        envelope = json.loads(record["canonical"])
        assert record["data"] == envelope["data"]
        assert record["metadata"] == {"actor": "siem-test"}
        link = bytes.fromhex(record["prev_hash"]) + record["canonical"].encode()
        assert hashlib.sha256(link).hexdigest() == record["hash"]

    def test_the_schema_refuses_a_record_without_its_canonical_text(
        self, records: list[dict[str, Any]]
    ) -> None:
        record = dict(records[0])
        del record["canonical"]
        with pytest.raises(AssertionError, match="canonical"):
            check_schema(record)

    def test_a_syslog_summary_validates_without_payload(
        self, records: list[dict[str, Any]]
    ) -> None:
        summary = {
            k: v
            for k, v in records[0].items()
            if k not in ("data", "metadata", "canonical")
        }
        check_schema({**summary, "summary": True})


class TestChecker:
    def test_an_untouched_log_from_the_start_has_no_finding(
        self, records: list[dict[str, Any]]
    ) -> None:
        assert check_all(records, after=0) == []

    def test_a_dropped_record_is_a_gap_naming_the_missing_position(
        self, records: list[dict[str, Any]]
    ) -> None:
        received = records[:4] + records[5:]
        [finding] = check_all(received, after=0)
        assert (finding.kind, finding.position) == ("gap", 6)
        assert (finding.missing_from, finding.missing_to) == (5, 5)
        assert str(finding) == "gap at position 6: position 5 is missing"

    def test_several_dropped_records_name_the_whole_range(
        self, records: list[dict[str, Any]]
    ) -> None:
        [finding] = check_all(records[:2] + records[7:], after=0)
        assert (finding.missing_from, finding.missing_to) == (3, 7)
        assert "positions 3..7 are missing" in str(finding)

    def test_changed_canonical_text_is_caught_by_its_hash(
        self, records: list[dict[str, Any]]
    ) -> None:
        changed = copy.deepcopy(records)
        changed[3]["canonical"] = changed[3]["canonical"].replace("P ü", "Q ü")
        [finding] = check_all(changed, after=0)
        assert (finding.kind, finding.position) == ("changed", 4)
        assert "sha256(prev_hash || canonical)" in finding.reason

    def test_a_rehashed_record_breaks_the_link_to_the_next(
        self, records: list[dict[str, Any]]
    ) -> None:
        changed = copy.deepcopy(records)
        record = changed[3]
        record["canonical"] = record["canonical"].replace("P ü", "Q ü")
        link = bytes.fromhex(record["prev_hash"]) + record["canonical"].encode()
        record["hash"] = hashlib.sha256(link).hexdigest()
        record["data"] = json.loads(record["canonical"])["data"]
        [finding] = check_all(changed, after=0)
        assert (finding.kind, finding.position) == ("changed", 5)
        assert "does not link to position 4" in finding.reason

    def test_a_changed_convenience_member_is_caught_against_canonical(
        self, records: list[dict[str, Any]]
    ) -> None:
        changed = copy.deepcopy(records)
        changed[2]["data"]["name"] = "forged"
        changed[2]["project_id"] = "other"
        [finding] = check_all(changed, after=0)
        assert (finding.kind, finding.position) == ("changed", 3)
        assert finding.reason.endswith("project_id, data")

    def test_a_replayed_record_is_out_of_order(
        self, records: list[dict[str, Any]]
    ) -> None:
        [finding] = check_all(records[:5] + [records[2]], after=0)
        assert (finding.kind, finding.position) == ("out-of-order", 3)

    def test_the_first_record_must_chain_from_genesis(
        self, records: list[dict[str, Any]]
    ) -> None:
        first = dict(records[0], prev_hash="00" * 32)
        findings = check_all([first], after=0)
        assert findings and findings[0].kind == "changed"

    def test_a_filtered_subscriber_checks_each_record_but_sees_no_gap(
        self, records: list[dict[str, Any]]
    ) -> None:
        datasets = [r for r in records if r["type"] == "DatasetRegistered"]
        assert len(datasets) == 2
        assert check_all(datasets, contiguous=False) == []
        forged = dict(datasets[1], canonical=datasets[1]["canonical"] + " ")
        [finding] = check_all([datasets[0], forged], contiguous=False)
        assert (finding.kind, finding.position) == ("changed", 12)

    def test_a_checker_resumes_from_a_known_position_and_hash(
        self, records: list[dict[str, Any]]
    ) -> None:
        checker = ChainChecker(after=6, prev_hash=records[5]["hash"])
        assert [f for r in records[6:] for f in checker.check(r)] == []
        assert checker.last_position == 12


class TestReading:
    async def test_records_filter_by_project_and_type(
        self, records: list[dict[str, Any]], pool: AsyncConnectionPool
    ) -> None:
        project = records[0]["project_id"]
        async with pool.connection() as conn:
            mine = await read_records(conn, after=0, limit=50, project_id=project)
            typed = await read_records(
                conn, after=0, limit=50, event_type="DatasetRegistered"
            )
            platform = await read_records(
                conn, after=0, limit=50, project_id=PLATFORM_TOKEN
            )
        assert [r.position for r in mine] == [1, 11, 12]
        assert [r.position for r in typed] == [11, 12]
        assert platform == []


class TestSubjects:
    def test_subjects_name_the_project_and_the_event_type(self) -> None:
        assert audit_subject("p-1", "RunCanceled") == "animus.audit.p-1.RunCanceled"
        assert audit_subject(None, "SubjectErased") == (
            "animus.audit._platform.SubjectErased"
        )

    def test_separators_and_wildcards_cannot_leave_their_token(self) -> None:
        assert audit_subject("a.b*>c d", "T") == "animus.audit.a%2Eb%2A%3Ec%20d.T"
        assert audit_subject("50%", "T") == "animus.audit.50%25.T"
        assert audit_subject("", "T") == "animus.audit.%.T"

    def test_filters_use_single_token_wildcards(self) -> None:
        assert audit_filter() == "animus.audit.*.*"
        assert audit_filter("p-1") == "animus.audit.p-1.*"
        assert audit_filter(None, "RunCanceled") == "animus.audit.*.RunCanceled"
