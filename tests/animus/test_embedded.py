"""An embedded service never takes another server for its own: a taken port
is refused before anything starts, and a server is called started only when
the one answering on its port is the child it started."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from animus import embedded
from animus.embedded import (
    GRPC_OFFSET,
    EmbeddedNats,
    EmbeddedPorts,
    EmbeddedS3,
    EmbeddedServiceError,
    EmbeddedStack,
    PortInUse,
    SeaweedPorts,
    free_ports,
    port_is_free,
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


# `weed mini`'s worker dials the admin port + 10000 whatever -admin.port.grpc
# says: with admin 58189 it dialled "68189: invalid port" every few seconds.
def _follows_the_grpc_convention(ports: SeaweedPorts) -> bool:
    pairs = [(ports.master, ports.master_grpc), (ports.volume, ports.volume_grpc)]
    pairs += [(ports.filer, ports.filer_grpc), (ports.admin, ports.admin_grpc)]
    return all(grpc == base + GRPC_OFFSET <= 65535 for base, grpc in pairs)


def test_seaweed_ports_are_picked_with_each_grpc_port_at_port_plus_10000() -> None:
    for _ in range(20):
        ports = SeaweedPorts.pick(exclude=(48333,))

        assert _follows_the_grpc_convention(ports)
        assert len(set(ports.values())) == 9 and 48333 not in ports.values()
        assert all(map(port_is_free, ports.values()))


def test_a_set_breaking_the_convention_is_refused() -> None:
    good = asdict(SeaweedPorts.pick())

    with pytest.raises(ValueError, match="admin"):
        SeaweedPorts(**{**good, "admin": 58189, "admin_grpc": 58190})
    with pytest.raises(ValueError, match="admin"):
        SeaweedPorts(**{**good, "admin_grpc": good["admin"] + 1})


def test_a_saved_set_breaking_the_convention_is_replaced(tmp_path: Path) -> None:
    server = EmbeddedS3(tmp_path / "s3", free_ports(1)[0])
    server.data_dir.mkdir(parents=True)
    names = [field.name for field in fields(SeaweedPorts)]
    stale = dict(zip(names, free_ports(9), strict=True)) | {"admin": 58189}
    (server.data_dir / "ports.json").write_text(json.dumps(stale))

    ports = server._resolve_ports()

    assert _follows_the_grpc_convention(ports)
    assert json.loads((server.data_dir / "ports.json").read_text()) == asdict(ports)


def test_a_good_saved_set_is_kept(tmp_path: Path) -> None:
    server = EmbeddedS3(tmp_path / "s3", free_ports(1)[0])
    server.data_dir.mkdir(parents=True)
    saved = SeaweedPorts.pick(exclude=(server.port,))
    (server.data_dir / "ports.json").write_text(json.dumps(asdict(saved)))

    assert server._resolve_ports() == saved
