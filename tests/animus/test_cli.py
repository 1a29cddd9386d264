"""The `animus` command's answers to wrong settings: one plain line naming the
setting, a non-zero exit, no traceback and no credentials."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import clitest
import httpx
import pytest
from clitest import one_line

from animus.embedded import free_ports

if TYPE_CHECKING:
    from tests.conftest import Services


def animus(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return clitest.animus(tmp_path, *args, timeout=60, **env)


class TestWrongSettings:
    @pytest.mark.parametrize("process", ["gateway", "relay", "executor"])
    def test_a_malformed_port_names_the_setting(
        self, tmp_path: Path, process: str
    ) -> None:
        done = animus(tmp_path, process, ANIMUS_GATEWAY_PORT="abc")
        assert done.returncode == 2
        assert one_line(done).startswith("animus: ANIMUS_GATEWAY_PORT: ")

    def test_an_unknown_executor_kind_names_the_setting(self, tmp_path: Path) -> None:
        done = animus(tmp_path, "up", ANIMUS_EXECUTOR_KIND="warp-drive")
        assert done.returncode == 2
        assert one_line(done).startswith("animus: ANIMUS_EXECUTOR_KIND: ")

    def test_dev_auth_in_production_names_the_auth_mode(self, tmp_path: Path) -> None:
        done = animus(tmp_path, "up", ANIMUS_ENVIRONMENT="production")
        assert done.returncode == 2
        line = one_line(done)
        assert line.startswith("animus: ANIMUS_AUTH_MODE: ")
        assert "production" in line


    @pytest.mark.parametrize("process", ["gateway", "up", "verify"])
    def test_a_mistyped_variable_is_named_with_the_setting_it_resembles(
        self, tmp_path: Path, process: str
    ) -> None:
        done = animus(tmp_path, process, ANIMUS_NATS_ULR="nats://127.0.0.1:1")
        assert done.returncode == 2
        assert one_line(done) == (
            "animus: ANIMUS_NATS_ULR: not a setting (did you mean ANIMUS_NATS_URL?)"
        )

class TestUnreachableServices:
    def test_an_unreachable_database_is_one_line_without_the_password(
        self, tmp_path: Path
    ) -> None:
        dsn = "postgresql://owner:hunter2-secret@127.0.0.1:1/animus"
        done = animus(tmp_path, "verify", ANIMUS_DATABASE_URL=dsn)
        assert done.returncode == 1
        line = one_line(done)
        assert "127.0.0.1:1" in line and "ANIMUS_DATABASE_URL" in line
        assert "hunter2" not in done.stderr + done.stdout

    def test_no_database_and_no_stack_says_how_to_get_one(
        self, tmp_path: Path
    ) -> None:
        done = animus(tmp_path, "verify")
        assert done.returncode == 1
        assert "animus up" in one_line(done)


class TestServiceAddresses:
    @pytest.mark.parametrize(
        ("process", "variable"),
        [
            ("gateway", "ANIMUS_NATS_URL"),
            ("relay", "ANIMUS_NATS_URL"),
            ("gateway", "ANIMUS_S3_ENDPOINT"),
            ("verify", "ANIMUS_DATABASE_URL"),
            ("gateway", "ANIMUS_APP_DATABASE_URL"),
        ],
    )
    def test_a_value_that_is_no_address_names_the_setting(
        self, tmp_path: Path, process: str, variable: str
    ) -> None:
        done = animus(tmp_path, process, **{variable: "notaurl"})
        assert done.returncode == 2
        assert one_line(done).startswith(f"animus: {variable}: must be ")

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("ANIMUS_NATS_URL", "nats//animus:hunter2@127.0.0.1:4222"),
            ("ANIMUS_S3_ENDPOINT", "http://animus:hunter2@127.0.0.1:port"),
            ("ANIMUS_DATABASE_URL", "postgresql://owner:hunter2 x@127.0.0.1/db"),
        ],
    )
    def test_a_malformed_address_is_not_echoed(
        self, tmp_path: Path, variable: str, value: str
    ) -> None:
        done = animus(tmp_path, "gateway", **{variable: value})
        assert done.returncode == 2
        assert one_line(done).startswith(f"animus: {variable}: ")
        assert "hunter2" not in done.stderr + done.stdout

    @pytest.mark.parametrize("value", ["", "abc", "{"])
    def test_dev_tokens_that_are_not_json_name_the_setting(
        self, tmp_path: Path, value: str
    ) -> None:
        done = animus(tmp_path, "gateway", ANIMUS_DEV_TOKENS=value)
        assert done.returncode == 2
        assert one_line(done) == "animus: ANIMUS_DEV_TOKENS: not valid JSON"


class TestCommandLine:
    def test_an_unknown_command_is_one_line(self, tmp_path: Path) -> None:
        done = animus(tmp_path, "bogus")
        assert done.returncode == 2
        assert one_line(done) == "animus: unknown command 'bogus' (try: animus --help)"

    def test_an_unknown_option_names_the_command(self, tmp_path: Path) -> None:
        done = animus(tmp_path, "verify", "--bogus")
        assert done.returncode == 2
        assert one_line(done) == (
            "animus: verify: unknown argument --bogus (try: animus verify --help)"
        )

    def test_no_command_is_one_line(self, tmp_path: Path) -> None:
        done = animus(tmp_path)
        assert done.returncode == 2
        assert one_line(done) == "animus: a command is required (try: animus --help)"

    def test_an_unexpected_error_is_one_line_and_its_traceback_is_logged(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        from animus import cli

        def broken(args: object, settings: object) -> int:
            raise KeyError("a bug")

        for name in [k for k in os.environ if k.startswith("ANIMUS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("ANIMUS_HOME", str(tmp_path))
        monkeypatch.setattr(cli, "_dispatch", broken)
        # logging stays as the session has it, not bound to capsys's stderr
        monkeypatch.setattr("animus.telemetry.configure_logging", lambda **_: None)

        assert cli.main(["verify"]) == 1

        log = tmp_path.resolve() / "logs" / "errors.log"
        assert capsys.readouterr().err.strip() == (
            f"animus: internal error: KeyError; see {log}"
        )
        record = json.loads(log.read_text().splitlines()[-1])
        assert record["event"] == "internal_error"
        assert "Traceback" in record["exception"] and "a bug" in record["exception"]


def start(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "animus", *args],
        env={**clean, "ANIMUS_HOME": str(tmp_path), **env},
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_promptly(process: subprocess.Popen[str]) -> str:
    """SIGTERM; the process must be gone within a few seconds, cleanly."""
    process.send_signal(signal.SIGTERM)
    began = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert time.monotonic() - began < 5
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    return stderr


class TestNatsUnreachable:
    """A valid NATS address where nothing answers, at start."""

    @pytest.fixture
    def env(self, services: Services, fresh_database: str) -> dict[str, str]:
        nats_port = free_ports(1)[0]
        return services.settings_env(fresh_database) | {
            "ANIMUS_NATS_URL": f"nats://127.0.0.1:{nats_port}",
            "ANIMUS_LOG_LEVEL": "error",
        }

    @pytest.mark.parametrize(
        "process", ["relay", "coordinator", "executor", "checkpointer"]
    )
    def test_a_process_that_needs_the_bus_gives_up_naming_the_setting(
        self, tmp_path: Path, env: dict[str, str], process: str
    ) -> None:
        done = animus(tmp_path, process, **env, ANIMUS_NATS_WAIT_SECONDS="1")

        assert done.returncode == 1
        where = env["ANIMUS_NATS_URL"].removeprefix("nats://")
        assert one_line(done) == (
            f"animus: ANIMUS_NATS_URL: NATS at {where} did not answer within 1s "
            "(see ANIMUS_NATS_WAIT_SECONDS)"
        )

    def test_sigterm_stops_a_process_still_connecting(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        relay = start(tmp_path, "relay", **(env | {"ANIMUS_LOG_LEVEL": "warning"}))
        assert relay.stderr is not None
        line = relay.stderr.readline()  # its first failed attempt
        assert '"event": "bus_error"' in line, line

        stop_promptly(relay)

    def test_the_gateway_serves_not_ready_and_stops_on_sigterm(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        port = free_ports(1)[0]
        gateway = start(tmp_path, "gateway", **env, ANIMUS_GATEWAY_PORT=str(port))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        ready = None
        while ready is None and time.monotonic() < deadline:
            assert gateway.poll() is None
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{url}/readyz", timeout=5)
            time.sleep(0.2)

        assert ready is not None and ready.status_code == 503
        assert ready.json()["checks"]["nats"] == "failed"
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        stop_promptly(gateway)


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


class TestPortsInUse:
    """A second platform on this machine must never use the first one's
    servers: a taken port stops `up` (and the gateway) before anything."""

    @pytest.mark.parametrize(
        "variable",
        [
            "ANIMUS_GATEWAY_PORT",
            "ANIMUS_EMBEDDED_POSTGRES_PORT",
            "ANIMUS_EMBEDDED_NATS_PORT",
            "ANIMUS_EMBEDDED_S3_PORT",
        ],
    )
    def test_up_refuses_a_taken_port_and_starts_nothing(
        self, tmp_path: Path, variable: str
    ) -> None:
        names = ["GATEWAY", "EMBEDDED_POSTGRES", "EMBEDDED_NATS", "EMBEDDED_S3"]
        ports = {
            f"ANIMUS_{name}_PORT": str(port)
            for name, port in zip(names, free_ports(4), strict=True)
        }
        home = tmp_path / "elsewhere" / ".animus"
        with listening_socket() as taken:
            port = taken.getsockname()[1]
            ports[variable] = str(port)
            done = animus(tmp_path, "up", **ports, ANIMUS_HOME=str(home))

        assert done.returncode == 2
        assert one_line(done) == (
            f"animus: {variable}: port {port} is in use "
            "(is another `animus up` running?)"
        )
        assert list(tmp_path.iterdir()) == []  # not even an empty up.lock

    def test_a_refused_up_leaves_an_existing_home_as_it_was(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "logs").mkdir()
        with listening_socket() as taken:
            port = str(taken.getsockname()[1])
            done = animus(tmp_path, "up", ANIMUS_GATEWAY_PORT=port)

        assert done.returncode == 2
        assert [p.name for p in tmp_path.iterdir()] == ["logs"]

    def test_the_gateway_names_its_port(self, tmp_path: Path) -> None:
        with listening_socket() as taken:
            port = taken.getsockname()[1]
            done = animus(tmp_path, "gateway", ANIMUS_GATEWAY_PORT=str(port))

        assert done.returncode == 2
        assert one_line(done) == (
            f"animus: ANIMUS_GATEWAY_PORT: port {port} is in use "
            "(is another `animus up` or gateway running?)"
        )


class _Gateway(BaseHTTPRequestHandler):
    """A gateway of some other stack: healthy, and counting what it is sent."""

    instance = "another-stack"
    posts = 0

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        self.send_response(200)
        self.send_header("Animus-Instance", self.instance)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
        type(self).posts += 1
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def other_gateway() -> Iterator[int]:
    _Gateway.posts = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class TestAnotherFolder:
    """Commands find the stack through ANIMUS_HOME (./.animus by default)."""

    @pytest.mark.parametrize(
        "command", ["verify", "replay", "check-storage", "migrate"]
    )
    def test_a_tool_without_a_stack_here_says_where_it_looked(
        self, tmp_path: Path, command: str
    ) -> None:
        done = animus(tmp_path, command)
        assert done.returncode == 1
        line = one_line(done)
        assert f"no `animus up` runs under {tmp_path.resolve()}" in line
        assert "ANIMUS_HOME" in line and "ANIMUS_DATABASE_URL" in line
        assert done.stdout == ""

    def test_the_demo_refuses_a_gateway_that_is_not_of_its_home(
        self, tmp_path: Path, other_gateway: int
    ) -> None:
        done = animus(
            tmp_path, "demo", "--json", ANIMUS_GATEWAY_PORT=str(other_gateway)
        )

        assert done.returncode == 2
        assert one_line(done) == (
            f"animus: ANIMUS_HOME: a platform answers at "
            f"http://127.0.0.1:{other_gateway}, but no `animus up` runs under "
            f"{tmp_path.resolve()}; run the demo in the folder where `animus up` "
            "runs, or set ANIMUS_HOME to that folder's .animus"
        )
        assert done.stdout == ""
        assert _Gateway.posts == 0

    def test_the_demo_checks_the_gateway_is_its_stacks(
        self, tmp_path: Path, other_gateway: int
    ) -> None:
        url = f"http://127.0.0.1:{other_gateway}"
        stack = {"pid": os.getpid(), "instance_id": "this-stack", "gateway_url": url}
        (tmp_path / "stack.json").write_text(json.dumps(stack))

        done = animus(tmp_path, "demo", "--json")

        assert done.returncode == 2
        assert one_line(done) == (
            f"animus: ANIMUS_GATEWAY_PORT: the gateway at {url} is not the one of "
            f"the `animus up` under {tmp_path.resolve()}"
        )
        assert _Gateway.posts == 0


class TestOperatorTools:
    """verify and replay print their answer on stdout, and nothing else:
    no progress bar outside a terminal, no log lines unless something is wrong."""

    @pytest.mark.parametrize(
        ("command", "last"), [("verify", "chain verified"), ("replay", "replay equals")]
    )
    def test_only_the_answer_is_printed(
        self, tmp_path: Path, fresh_database: str, command: str, last: str
    ) -> None:
        done = animus(tmp_path, command, ANIMUS_DATABASE_URL=fresh_database)

        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        lines = done.stdout.splitlines()
        assert lines[-1].startswith(last)
        assert all(line.strip() for line in lines), done.stdout


def closed_pipe_run(
    tmp_path: Path, argv: list[str], **env: str
) -> subprocess.CompletedProcess[str]:
    """`argv` with stdout a pipe whose reader has already gone, as when
    `| head -1` has read its line: every write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANIMUS_")}
    try:
        return subprocess.run(
            [sys.executable, *argv],
            env={**clean, "ANIMUS_HOME": str(tmp_path), **env},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)


PRINTING = """
import sys
from animus import cli
def dispatch(args, settings):
    for _ in range({lines}):
        print("a line of output")
    return 0
cli._dispatch = dispatch
sys.exit(cli.main(["verify"]))
"""


class TestClosedStdout:
    """`animus ... | head -1`: a reader that stops early ends the command
    quietly with 141 (128 + SIGPIPE, what a shell shows for a killed
    writer), not with an internal error."""

    @pytest.mark.parametrize("lines", [1, 100_000])
    def test_any_command_stops_quietly(self, tmp_path: Path, lines: int) -> None:
        # 1 line fails when stdout is flushed at the end; 100 000 on the way
        done = closed_pipe_run(tmp_path, ["-c", PRINTING.format(lines=lines)])
        assert done.returncode == 141
        assert done.stderr == ""
        assert not (tmp_path / "logs" / "errors.log").exists()

    def test_verify_stops_quietly(self, tmp_path: Path, fresh_database: str) -> None:
        done = closed_pipe_run(
            tmp_path, ["-m", "animus", "verify"], ANIMUS_DATABASE_URL=fresh_database
        )
        assert done.returncode == 141
        assert done.stderr == ""
