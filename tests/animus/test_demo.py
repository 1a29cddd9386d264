"""What `animus demo` prints: a summary that says what it checked, digests
that stay whole outside a terminal, and the platform stopped after it."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
from rich.console import Console

from animus import demo
from animus.settings import Settings

SPEC = hashlib.sha256(b"spec").hexdigest()
PLAN = hashlib.sha256(b"plan").hexdigest()
MODEL = hashlib.sha256(b"model").hexdigest()


def result(**rerun: Any) -> dict[str, Any]:
    return {
        "run_id": "r-1",
        "status": "succeeded",
        "metrics": {"accuracy": 0.97},
        "artifacts": [{"name": "model.pkl", "sha256": MODEL, "size": 1234}],
        "spec_hash": SPEC,
        "plan_hash": PLAN,
        "lineage": {},
        "rerun": {
            "run_id": "r-2",
            "spec_hash": SPEC,
            "plan_hash": PLAN,
            "model_sha256_equal": True,
        }
        | rerun,
        "chain": {"verified": True, "events": 42},
    }


def report(outcome: dict[str, Any]) -> str:
    out = io.StringIO()
    demo._report(Console(file=out, width=60, soft_wrap=True), outcome)
    return out.getvalue()


def test_the_rerun_says_both_hashes_are_equal() -> None:
    assert (
        f"rerun r-2: spec and plan hashes equal (spec {SPEC[:16]}…, "
        f"plan {PLAN[:16]}…), model sha256 identical"
    ) in report(result())


def test_the_rerun_names_the_hash_that_differs() -> None:
    other = hashlib.sha256(b"other").hexdigest()

    text = report(result(plan_hash=other))

    assert f"spec hash equal ({SPEC[:16]}…, then {SPEC[:16]}…)" in text
    assert f"plan hash DIFFERENT ({PLAN[:16]}…, then {other[:16]}…)" in text


def test_digests_stay_on_one_line_outside_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    console = demo._console(stderr=False)
    outcome = result()

    console.print(f"uploaded wine_data.csv as wine v1 sha256 {MODEL}")
    demo._show_run(console, outcome, outcome["lineage"], quiet=False)

    lines = capsys.readouterr().out.splitlines()
    assert f"uploaded wine_data.csv as wine v1 sha256 {MODEL}" in lines
    assert any(MODEL in line and "model.pkl" in line for line in lines)


def test_the_summary_comes_before_the_platform_stops(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = object()
    monkeypatch.setattr("animus.telemetry.configure_logging", lambda **_: None)
    monkeypatch.setattr(
        demo, "_platform", lambda *_, **__: ("http://127.0.0.1:1", started)
    )
    monkeypatch.setattr(demo, "run_job", lambda *_, **__: result())
    stopped: list[object] = []

    def stop(process: object) -> None:
        print("<stopped>")
        stopped.append(process)

    monkeypatch.setattr(demo, "_stop_stack", stop)

    assert demo.run_demo(Settings(), as_json=False) == 0

    out = capsys.readouterr().out
    assert stopped == [started]
    assert out.index("hash chain: 42 events") < out.index("stopping the platform")
    assert out.index("stopping the platform") < out.index("<stopped>")
