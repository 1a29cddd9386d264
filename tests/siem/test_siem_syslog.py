"""Syslog forwarding against a real rsyslogd (Debian's rsyslog and
rsyslog-gnutls): every audit record arrives as an RFC 5424 message over TCP
with octet-counting framing, and over TLS (RFC 5425) with a CA made here;
rsyslog parses the structured data (position, hash, prev_hash) and the
message is the SIEM record, or its summary when it is too long."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg_pool import AsyncConnectionPool
from siemtest import append_projects, check_schema

from animus.embedded import free_port
from animus.eventstore import EventStore
from animus.siem import ChainChecker
from animus.siem.stream import read_records
from animus.siem.syslog import SD_ID, SyslogForwarder, SyslogSender, SyslogTarget

RSYSLOGD = shutil.which("rsyslogd", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
if RSYSLOGD is None and os.environ.get("CI") != "true":
    pytest.skip(
        "rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls); "
        "under CI=true this test runs",
        allow_module_level=True,
    )

# one line per message: fields rsyslog parsed, tab-separated
TEMPLATE = """
template(name="fields" type="list") {
  property(name="msgid") constant(value="\\t")
  property(name="app-name") constant(value="\\t")
  property(name="hostname") constant(value="\\t")
  property(name="structured-data") constant(value="\\t")
  property(name="msg") constant(value="\\n")
}
"""


@dataclass(frozen=True)
class Collector:
    port: int
    output: Path
    ca_file: Path | None

    def messages(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The first `count` messages rsyslog wrote, parsed."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.output.read_text() if self.output.exists() else ""
            lines = text.splitlines()
            if len(lines) >= count or time.monotonic() > deadline:
                return [parse(line) for line in lines]
            time.sleep(0.1)


def parse(line: str) -> dict[str, Any]:
    msgid, app, host, sd, msg = line.split("\t", 4)
    params = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', sd))
    return {
        "msgid": msgid,
        "app": app,
        "host": host,
        "sd_id": sd[1 : sd.index(" ")],
        "sd": params,
        "record": json.loads(msg.strip()),
    }


def make_ca(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "siem test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return paths


def start_rsyslogd(folder: Path, *, tls: bool) -> Iterator[Collector]:
    assert RSYSLOGD is not None, "rsyslogd is missing: CI installs rsyslog"
    port = free_port()
    work = folder / "work"
    work.mkdir()
    output = folder / "out.log"
    tls_global = tls_module = ""
    ca_file = None
    if tls:
        pem = make_ca(folder)
        ca_file = pem["ca"]
        tls_global = (
            f'defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{pem["ca"]}" '
            f'defaultNetstreamDriverCertFile="{pem["cert"]}" '
            f'defaultNetstreamDriverKeyFile="{pem["key"]}"'
        )
        tls_module = 'streamDriver.name="gtls" streamDriver.mode="1" '
        tls_module += 'streamDriver.authMode="anon"'
    conf = folder / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{work}" maxMessageSize="64k" {tls_global})\n'
        f'module(load="imtcp" {tls_module})\n'
        f"{TEMPLATE}\n"
        f'input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="siem")\n'
        'ruleset(name="siem") {\n'
        f'  action(type="omfile" file="{output}" template="fields")\n'
        "}\n"
    )
    log_file = (folder / "rsyslogd.log").open("wb")
    process = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(conf), "-i", str(folder / "rsyslogd.pid")],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process, folder / "rsyslogd.log")
        yield Collector(port=port, output=output, ca_file=ca_file)
    finally:
        process.terminate()
        process.wait(10)
        log_file.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rsyslogd exited: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"rsyslogd did not listen: {log.read_text()[-2000:]}")


@pytest.fixture(params=["tcp", "tls"])
def collector(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Collector]:
    yield from start_rsyslogd(tmp_path, tls=request.param == "tls")


async def forward_all(pool: AsyncConnectionPool, target: SyslogTarget) -> int:
    forwarder = SyslogForwarder(pool, target, name=f"syslog-{target.port}")
    sent = 0
    try:
        while count := await forwarder.run_once():
            sent += count
    finally:
        forwarder.sender.close()
    return sent


class TestForwarding:
    async def test_rsyslog_receives_every_record_with_position_and_hash(
        self, collector: Collector, store: EventStore, pool: AsyncConnectionPool
    ) -> None:
        await append_projects(store, 5)
        target = SyslogTarget(
            host="127.0.0.1",
            port=collector.port,
            tls=collector.ca_file is not None,
            ca_file=collector.ca_file,
            app_name="animus-test",
            hostname="lab-1",
        )
        sent = await forward_all(pool, target)
        messages = collector.messages(sent)
        assert len(messages) == sent >= 5

        checker = ChainChecker(after=0)
        for number, message in enumerate(messages, start=1):
            record = message["record"]
            assert message["sd_id"] == SD_ID
            assert message["sd"]["position"] == str(number) == str(record["position"])
            assert message["sd"]["hash"] == record["hash"]
            assert message["sd"]["prev_hash"] == record["prev_hash"]
            assert message["msgid"] == record["type"]
            assert (message["app"], message["host"]) == ("animus-test", "lab-1")
            check_schema(record)
            assert checker.check(record) == []

    async def test_a_record_too_long_arrives_as_its_summary(
        self, collector: Collector, store: EventStore, pool: AsyncConnectionPool
    ) -> None:
        await append_projects(store, 1)
        target = SyslogTarget(
            host="127.0.0.1",
            port=collector.port,
            tls=collector.ca_file is not None,
            ca_file=collector.ca_file,
            max_message_bytes=600,
        )
        sent = await forward_all(pool, target)
        messages = collector.messages(sent)
        last = messages[-1]["record"]
        assert last["summary"] is True
        assert "canonical" not in last and "data" not in last
        assert messages[-1]["sd"]["hash"] == last["hash"]
        check_schema(last)


class TestMessage:
    async def test_the_header_is_log_audit_informational_at_recorded_at(
        self, store: EventStore, pool: AsyncConnectionPool
    ) -> None:
        [event] = await append_projects(store, 1)
        async with pool.connection() as conn:
            [item] = await read_records(conn, after=event.position - 1, limit=1)
        sender = SyslogSender(SyslogTarget(host="127.0.0.1", port=1, hostname="h"))
        message = sender.message(item)
        stamp = item.record["recorded_at"].replace("Z", "+00:00")
        assert message.startswith(f"<110>1 {stamp} h animus ".encode())
        assert b" ProjectCreated [animus@32473 position=" in message
        assert message.endswith(item.line.encode())
