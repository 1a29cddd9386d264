"""The sandbox's command line and policy, and the executor where bubblewrap is
missing: refused by default, allowed with a warning on every launch in dev."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import structlog
from exectest import Harness, make_launch, python

from animus.errors import ConfigurationError
from animus.settings import Settings, load_settings
from executors import sandbox
from executors.sandbox import (
    SandboxLayout,
    SandboxMode,
    SandboxUnavailable,
    bwrap_argv,
    choose_policy,
    unsandboxed_argv,
    workload_env,
)


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, arg in enumerate(argv) if arg == flag]


def test_bwrap_argv_confines_the_workload(tmp_path: Path) -> None:
    layout = SandboxLayout(inputs_dir=tmp_path / "in", outputs_dir=tmp_path / "out")
    argv = bwrap_argv("/usr/bin/bwrap", ["python", "train.py"], layout)
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-all", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--share-net" not in argv
    assert argv[-3:] == ["--", "python", "train.py"]
    ro = pairs(argv, "--ro-bind")
    rw = pairs(argv, "--bind")
    assert (str(tmp_path / "in"), "/inputs") in ro
    assert rw == [(str(tmp_path / "out"), "/outputs")]
    prefix = str(Path(sys.prefix).resolve())
    base = str(Path(sys.base_prefix).resolve())
    assert (prefix, prefix) in ro and (base, base) in ro
    assert ("/usr", "/usr") in ro
    assert argv[argv.index("--tmpfs") + 1] == "/tmp"
    assert argv[argv.index("--proc") + 1] == "/proc"
    assert argv[argv.index("--dev") + 1] == "/dev"


def test_workload_env_is_clean_and_puts_the_venv_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANIMUS_S3_SECRET_KEY", "do-not-leak")
    env = workload_env(run_id="r", attempt=2, parameters={"seed": 1}, cpu=1.5)
    assert env["PATH"].split(":")[0] == str(Path(sys.prefix) / "bin")
    assert json.loads(env["ANIMUS_PARAMS"]) == {"seed": 1}
    assert env["OMP_NUM_THREADS"] == "2"
    assert "ANIMUS_S3_SECRET_KEY" not in env
    assert "do-not-leak" not in json.dumps(env)


def test_unsandboxed_argv_points_inputs_and_outputs_home(tmp_path: Path) -> None:
    layout = SandboxLayout(inputs_dir=tmp_path / "in", outputs_dir=tmp_path / "out")
    argv = unsandboxed_argv(
        ["python", "/inputs/code", "/inputs/wine", "/outputs", "/inputsx"], layout
    )
    assert argv == [
        "python",
        f"{tmp_path}/in/code",
        f"{tmp_path}/in/wine",
        f"{tmp_path}/out",
        "/inputsx",
    ]


def test_policy_without_bubblewrap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    strict = Settings(home=tmp_path, environment="test")
    with pytest.raises(SandboxUnavailable):
        choose_policy(strict)
    dev = Settings(home=tmp_path, environment="dev", allow_unsandboxed=True)
    assert choose_policy(dev).mode is SandboxMode.UNSANDBOXED
    present = choose_policy(strict, bwrap="/usr/bin/bwrap")
    assert present.mode is SandboxMode.BWRAP
    with pytest.raises(ConfigurationError):
        load_settings(environment="production", allow_unsandboxed=True)
    # even settings that slipped past validation never run unsandboxed there
    production = Settings.model_construct(
        environment="production", allow_unsandboxed=True
    )
    with pytest.raises(SandboxUnavailable):
        choose_policy(production)


async def test_missing_bubblewrap_refuses_the_launch(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    launch = make_launch(python("open('/outputs/ran', 'w')"))
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    assert [r.kind for r in reports] == ["failed"]
    assert reports[0].reason == "sandbox_unavailable"
    ws = harness.settings.workdir.resolve() / launch.run_id / "1"
    assert not (ws / "marker.json").exists()


async def test_unsandboxed_dev_mode_runs_and_warns_on_every_launch(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    harness.settings = Settings(
        home=harness.settings.home, environment="dev", allow_unsandboxed=True
    )
    code = """
        import os, sys
        open(os.path.join(sys.argv[1], "out.txt"), "w").write(os.environ["HOME"])
        """
    launches = [make_launch([*python(code), "/outputs"]) for _ in range(2)]
    with structlog.testing.capture_logs() as logs:
        async with harness.running():
            for launch in launches:
                await harness.launch(launch)
            results = [await harness.reports(launch.run_id) for launch in launches]
    for reports in results:
        assert reports[-1].kind == "succeeded", reports[-1]
        assert any(r.artifact and r.artifact.name == "out.txt" for r in reports)
    warnings = [e for e in logs if e["event"] == "launch_unsandboxed"]
    assert len(warnings) == 2
    assert all(e["log_level"] == "warning" for e in warnings)


async def test_unsandboxed_a_command_path_that_does_not_exist_is_exec_failed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """C02, dev mode: exec fails, and that is what the run says."""
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    harness.settings = Settings(
        home=harness.settings.home, environment="dev", allow_unsandboxed=True
    )
    missing = tmp_path / "bin" / "train"
    launch = make_launch([str(missing), "--epochs", "3"])
    async with harness.running():
        await harness.launch(launch)
        reports = await harness.reports(launch.run_id)
    final = reports[-1]
    assert (final.kind, final.reason) == ("failed", "exec_failed")
    assert final.message == f"command not found: {missing}"


def test_build_argv_starts_the_command_through_the_exec_helper(
    tmp_path: Path,
) -> None:
    layout = SandboxLayout(inputs_dir=tmp_path / "in", outputs_dir=tmp_path / "out")
    helper = [sys.executable, "-I", "-S", "-c", sandbox.EXEC_HELPER.read_text()]
    bwrap = sandbox.SandboxPolicy(mode=SandboxMode.BWRAP, bwrap="/usr/bin/bwrap")
    argv = sandbox.build_argv(bwrap, ["python", "/inputs/x"], layout)
    assert argv[-8:] == ["--", *helper, "python", "/inputs/x"]
    dev = sandbox.SandboxPolicy(mode=SandboxMode.UNSANDBOXED)
    argv = sandbox.build_argv(dev, ["python", "/inputs/x"], layout)
    assert argv == [*helper, "python", f"{tmp_path}/in/x"]


def test_the_shim_and_the_exec_helper_name_the_same_pipe() -> None:
    from executors import exec_helper, shim

    assert shim.EXEC_STATUS_FD == exec_helper.STATUS_FD_VARIABLE


@pytest.mark.skipif(sandbox.find_bwrap() is None, reason="bubblewrap is missing")
def test_a_python_prefix_under_tmp_stays_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone under /tmp (as CI may make) keeps its venv inside the sandbox."""
    import subprocess

    prefix = tmp_path / "venv"
    (prefix / "bin").mkdir(parents=True)
    tool = prefix / "bin" / "hello"
    tool.write_text("#!/bin/sh\necho hello from the prefix\n")
    tool.chmod(0o755)
    monkeypatch.setattr(sandbox, "python_prefixes", lambda: [prefix])
    layout = SandboxLayout(inputs_dir=tmp_path / "in", outputs_dir=tmp_path / "out")
    layout.inputs_dir.mkdir()
    layout.outputs_dir.mkdir()
    argv = bwrap_argv(str(sandbox.find_bwrap()), [str(tool)], layout)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello from the prefix"
