"""The one error tree of the platform.

    AnimusError
    ├── ConfigurationError        a setting is wrong; the process stops at start
    ├── NotFoundError             a resource does not exist (404)
    ├── ConflictError             the request conflicts with current state (409)
    │   ├── StreamVersionConflict optimistic concurrency lost on a stream
    │   └── AlreadyExistsError    a resource with this id exists
    ├── ValidationError           the request is well-formed but refused (422)
    ├── StoreError                the event store failed
    │   └── TransientStoreError   retryable (503)
    ├── ChainError                the hash chain does not verify
    ├── BusError                  NATS / JetStream failed
    ├── SyslogError               a syslog collector refused or dropped us
    ├── StorageError              the object store failed
    └── PersonalDataError         a sealed personal field cannot be opened

Lower-level exceptions (psycopg, nats, botocore) are translated to these at
exactly one boundary each, chained with `from`.
"""

from __future__ import annotations


class AnimusError(Exception):
    """Root of every error the platform raises on purpose."""

    title = "Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigurationError(AnimusError):
    title = "Invalid configuration"


class NotFoundError(AnimusError):
    title = "Not found"


class ConflictError(AnimusError):
    title = "Conflict"


class StreamVersionConflict(ConflictError):
    title = "Stream version conflict"


class AlreadyExistsError(ConflictError):
    title = "Already exists"


class ValidationError(AnimusError):
    """Refused content; `field` names the refused field where one is to blame."""

    title = "Validation failed"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class StoreError(AnimusError):
    title = "Event store error"


class TransientStoreError(StoreError):
    title = "Event store temporarily unavailable"


class ChainError(AnimusError):
    title = "Hash chain broken"


class BusError(AnimusError):
    title = "Bus error"


class SyslogError(AnimusError):
    title = "Syslog error"


class StorageError(AnimusError):
    title = "Object storage error"


class PersonalDataError(AnimusError):
    """A sealed field does not open: tampered, moved, or its key is missing.

    An erased subject is not an error: its fields read as erased.
    """

    title = "Personal data error"
