"""An embedded service never takes another server for its own: a taken port
is refused before anything starts, and a server is called started only when
the one answering on its port is the child it started."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from animus import embedded
from animus.embedded import (
    EmbeddedNats,
    EmbeddedPorts,
    EmbeddedServiceError,
    EmbeddedStack,
    PortInUse,
    free_ports,
)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_refused_before_the_server_starts(
    tmp_path: Path, taken_port: int
) -> None:
    server = EmbeddedNats(tmp_path / "nats", taken_port)

    with pytest.raises(PortInUse) as refused:
        server.start()

    assert (refused.value.service, refused.value.port) == ("nats", taken_port)
    assert not (tmp_path / "nats" / "nats-server.pid").exists()


def test_the_stack_names_every_taken_port_before_starting(
    tmp_path: Path, taken_port: int
) -> None:
    nats_port, s3_port = free_ports(2)
    stack = EmbeddedStack(
        tmp_path, EmbeddedPorts(postgres=taken_port, nats=nats_port, s3=s3_port)
    )

    assert stack.ports_taken() == [("postgres", taken_port)]


def test_another_server_on_the_port_is_not_taken_for_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = EmbeddedNats(tmp_path / "first", free_ports(1)[0])
    first.start()
    try:
        # as if the port were taken between the check and the start
        monkeypatch.setattr(embedded, "_claim", lambda service, port: None)
        second = EmbeddedNats(tmp_path / "second", first.port, start_timeout=10)

        with pytest.raises(EmbeddedServiceError):
            second.start()

        assert not second._child  # stopped again
        assert first._ready()  # and the first one was left alone
    finally:
        first.stop()


class _Impostor:
    """A child that runs but does not listen: someone else answered."""

    def exit_code(self) -> int | None:
        return None

    def listens_on(self, port: int) -> bool:
        return False


def test_an_answer_counts_only_from_our_child(tmp_path: Path) -> None:
    with pytest.raises(PortInUse):
        embedded._wait_until(
            "nats",
            lambda: True,
            child=_Impostor(),  # type: ignore[arg-type]
            port=4222,
            timeout=1,
            log_path=tmp_path / "nats.log",
        )
