"""`animus demo` on a machine with nothing running: it starts the embedded
PostgreSQL, NATS and S3 from their wheels and the five processes itself,
runs the main job, stops everything it started, and says how to keep a
platform running. No service is given in settings here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from animus.embedded import free_port


def test_demo_starts_the_embedded_stack_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
    env |= {"ANIMUS_HOME": str(tmp_path / ".animus"), "ANIMUS_GATEWAY_PORT": str(port)}
    before = {p.pid for p in psutil.process_iter()}

    done = subprocess.run(
        [sys.executable, "-m", "animus", "demo", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    assert result["metrics"]["accuracy"] > 0.9
    for artifact in result["artifacts"]:
        assert len(artifact["sha256"]) == 64 and artifact["size"] > 0
    assert result["rerun"]["model_sha256_equal"] is True
    assert result["chain"] == {"verified": True, "events": result["chain"]["events"]}
    assert result["chain"]["events"] > 20
    # it says how to keep a platform running, on stderr beside the JSON
    assert "animus up" in done.stderr and f"127.0.0.1:{port}" in done.stderr

    # data went under ANIMUS_HOME, and nothing the demo started is left
    assert any((tmp_path / ".animus").iterdir())
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if p.pid not in before
        and any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
    ]
    assert leftovers == []
