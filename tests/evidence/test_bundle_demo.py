"""The demo run's evidence bundle, end to end: `animus up` with its
checkpointer, `animus demo`, then `animus evidence export`, the auditor's API
route, and `animus evidence verify` with no database, no bus and nothing of
the control plane loaded. Then single flipped bytes, every one of which must
fail. The stack is started the way tests/e2e/test_main_job.py starts it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from animus.embedded import free_port
from animus.evidence.offline import VerificationFailure, load_key, verify_bundle

UP_TIMEOUT = 120
CONTROL_PLANE = (
    "commands",
    "projections",
    "gateway",
    "executors",
    "animus.db",
    "animus.eventstore",
    "animus.bus",
    "animus.relay",
    "animus.storage",
    "psycopg",
    "nats",
    "faststream",
    "litestar",
    "aioboto3",
)


@pytest.fixture(scope="module")
def env(services: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    name = f"animus_bundle_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
    home = Path(tmp_path_factory.mktemp("bundle"))
    return {
        **os.environ,
        **services.settings_env(dsn),
        "ANIMUS_HOME": str(home),
        "ANIMUS_GATEWAY_PORT": str(free_port()),
        "ANIMUS_S3_BUCKET": f"bundle-{uuid.uuid4().hex[:8]}",
        "ANIMUS_CHECKPOINT_EVERY_EVENTS": "5",
        "ANIMUS_CHECKPOINT_INTERVAL_SECONDS": "1",
    }


def animus(env: dict[str, str], *args: str, check: bool = True) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "animus", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[None]:
    import time

    home = Path(env["ANIMUS_HOME"])
    process = subprocess.Popen(
        [sys.executable, "-m", "animus", "up"],
        env=env,
        stdout=(home / "up.out").open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{env['ANIMUS_GATEWAY_PORT']}/readyz"
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            assert process.poll() is None, (home / "up.out").read_text()[-3000:]
            assert time.monotonic() < deadline, (home / "up.out").read_text()[-3000:]
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        process.wait(timeout=90)


@pytest.fixture(scope="module")
def demo_run(env: dict[str, str], stack: None) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(animus(env, "demo", "--json").stdout)
    assert result["status"] == "succeeded"
    return result


@pytest.fixture(scope="module")
def exported(
    env: dict[str, str],
    demo_run: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("export")
    path = folder / "evidence.tar"
    done = animus(
        env,
        "evidence",
        "export",
        "--run",
        demo_run["run_id"],
        "--output",
        str(path),
        "--wait",
        "60",
    )
    assert "bundle written" in done.stdout
    vkey = animus(env, "evidence", "key").stdout.strip()
    (folder / "log.vkey").write_text(vkey + "\n")
    return path, vkey


def offline_env(env: dict[str, str]) -> dict[str, str]:
    """Settings that point at nothing: a closed port for PostgreSQL and NATS."""
    closed = free_port()
    return {
        **{k: v for k, v in env.items() if not k.startswith("ANIMUS_")},
        "ANIMUS_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{closed}/none",
        "ANIMUS_NATS_URL": f"nats://127.0.0.1:{closed}",
        "ANIMUS_S3_ENDPOINT": f"http://127.0.0.1:{closed}",
    }


class TestDemoBundle:
    def test_the_bundle_holds_the_run_its_inputs_and_artifacts(
        self, exported: tuple[Path, str], demo_run: dict[str, Any]
    ) -> None:
        with tarfile.open(exported[0]) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive}  # type: ignore[union-attr]
        manifest = json.loads(members["manifest.json"])
        assert manifest["run_id"] == demo_run["run_id"]
        assert manifest["run"]["status"] == "succeeded"
        assert manifest["run"]["plan_hash"] == demo_run["plan_hash"]
        assert {d["dataset_id"] for d in manifest["dataset_versions"]} == {
            "wine",
            "wine-train-code",
        }
        recorded = {a["name"]: a["sha256"] for a in demo_run["artifacts"]}
        assert {a["name"]: a["sha256"] for a in manifest["artifacts"]} == recorded
        for artifact in manifest["artifacts"]:
            content = members[artifact["member"]]
            assert hashlib.sha256(content).hexdigest() == artifact["sha256"]
        types = [e["type"] for e in manifest["events"]]
        assert types.count("DatasetVersionCommitted") == 2
        assert "RunPlanned" in types and types[-1] == "RunSucceeded"

    def test_it_verifies_offline_with_the_pinned_key(
        self, env: dict[str, str], exported: tuple[Path, str]
    ) -> None:
        path, vkey = exported
        done = animus(
            offline_env(env),
            "evidence",
            "verify",
            str(path),
            "--key",
            str(path.parent / "log.vkey"),
        )
        assert done.stdout.startswith("bundle verified: run ")
        assert done.stderr == ""

    def test_without_a_pinned_key_it_refuses_unless_told_to_trust_the_bundle(
        self, env: dict[str, str], exported: tuple[Path, str]
    ) -> None:
        path, vkey = exported
        refused = animus(offline_env(env), "evidence", "verify", str(path), check=False)
        assert refused.returncode == 2
        assert "--key VKEY is required" in refused.stderr
        done = animus(
            offline_env(env), "evidence", "verify", str(path), "--trust-bundle-key"
        )
        key_id = vkey.split("+")[1]
        assert "KEY NOT PINNED" in done.stderr
        assert key_id in done.stderr

    def test_verify_loads_nothing_of_the_control_plane(
        self, env: dict[str, str], exported: tuple[Path, str]
    ) -> None:
        path, vkey = exported
        script = (
            "import sys\n"
            "from animus.cli import main\n"
            f"code = main(['evidence', 'verify', {str(path)!r}, '--key', {vkey!r}])\n"
            f"loaded = [m for m in sys.modules if m.split('.')[0] in {CONTROL_PLANE!r}"
            f" or m in {CONTROL_PLANE!r}]\n"
            "print('LOADED', code, sorted(loaded))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=offline_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.strip().endswith("LOADED 0 []"), done.stdout + done.stderr

    def test_the_auditor_route_serves_the_same_bytes(
        self, env: dict[str, str], exported: tuple[Path, str], demo_run: dict[str, Any]
    ) -> None:
        base = f"http://127.0.0.1:{env['ANIMUS_GATEWAY_PORT']}/projects/demo/runs"
        answer = httpx.get(
            f"{base}/{demo_run['run_id']}/evidence",
            headers={"Authorization": "Bearer dev-token"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/x-tar"
        assert answer.content == exported[0].read_bytes()

        missing = httpx.get(
            f"{base}/no-such-run/evidence",
            headers={"Authorization": "Bearer dev-token"},
        )
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"

    def test_a_flipped_byte_fails_with_one_line(
        self, env: dict[str, str], exported: tuple[Path, str]
    ) -> None:
        path, vkey = exported
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x01
        flipped = path.with_name("flipped.tar")
        flipped.write_bytes(data)
        done = animus(
            offline_env(env),
            "evidence",
            "verify",
            str(flipped),
            "--key",
            vkey,
            check=False,
        )
        assert done.returncode == 1
        assert done.stdout.count("\n") == 1
        assert done.stdout.startswith("verification failed: ")

    def test_flipping_any_single_byte_fails(self, exported: tuple[Path, str]) -> None:
        """Coverage: every byte of every tar header block (512 each) and every
        byte of the manifest, the checkpoint note and the key; of the other
        members' content and padding (the events, the proofs, the artifacts:
        about 400 KB) the first and last 64 bytes of each and an evenly
        spaced sample of about 2,000 more; the end-of-archive zeros every
        512th byte. Each flip is one bit; over 8,000 verifications (asserted),
        about 14 s on the 2-core development machine."""
        path, vkey = exported
        key = load_key(vkey)
        data = path.read_bytes()
        verify_bundle(data, key=key)
        sample = sorted(_flip_sample(data))
        changed = bytearray(data)
        passed = []
        for index in sample:
            changed[index] ^= 0x01
            try:
                verify_bundle(bytes(changed), key=key)
            except VerificationFailure:
                pass
            else:
                passed.append(index)
            changed[index] ^= 0x01
        assert passed == [], f"{len(passed)} of {len(sample)} flips verified"
        assert len(sample) > 8000


FLIP_EVERY_BYTE = {"manifest.json", "checkpoint.note", "key.vkey"}
FLIP_SAMPLE = 2000


def _flip_sample(data: bytes) -> set[int]:
    """Offsets to flip: see test_flipping_any_single_byte_fails."""
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
    spans = [
        (info.name, info.offset_data, info.offset_data + -(-info.size // 512) * 512)
        for info in members
    ]
    sampled = sum(
        end - start for name, start, end in spans if name not in FLIP_EVERY_BYTE
    )
    stride = max(1, sampled // FLIP_SAMPLE)
    sample: set[int] = set()
    for info, (name, start, end) in zip(members, spans, strict=True):
        sample.update(range(info.offset, info.offset + 512))
        if name in FLIP_EVERY_BYTE:
            sample.update(range(start, end))
        else:
            sample.update(range(start, end, stride))
            sample.update(range(start, min(end, start + 64)))
            sample.update(range(max(start, end - 64), end))
    sample.update(range(spans[-1][2], len(data), 512))
    return sample
