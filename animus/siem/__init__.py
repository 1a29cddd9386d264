"""The SIEM stream: audit records on JetStream, over HTTP and to syslog.

This package's top level is the record format and the subscriber's checks
(`animus.siem.record`), standard library only; the publisher
(`animus.siem.stream`), the syslog forwarder (`animus.siem.syslog`) and the
`animus siem follow` command (`animus.siem.follow`) are imported by name.
The format is documented in contracts/siem.md.
"""

from animus.siem.record import (
    ENVELOPE_MEMBERS,
    FORMAT,
    GENESIS_HASH,
    ChainChecker,
    Finding,
    build_record,
    record_line,
)

__all__ = [
    "ENVELOPE_MEMBERS",
    "FORMAT",
    "GENESIS_HASH",
    "ChainChecker",
    "Finding",
    "build_record",
    "record_line",
]
