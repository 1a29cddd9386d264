"""Settings from the environment (prefix `ANIMUS_`), checked once at start.

A wrong setting stops the process with one line naming it; see `load_settings`.
Services left unset (database, NATS, S3) are started embedded by `animus up`.
"""

from __future__ import annotations

import base64
import difflib
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from animus.errors import ConfigurationError

APP_ROLE = "animus_app"
# the response header in which the gateway names its `animus up` (instance_id)
INSTANCE_HEADER = "Animus-Instance"

_DSN = ("a postgresql:// DSN", ("postgresql", "postgres"))
# What each service address must look like: checked by syntax alone at load,
# so that a typo stops the process instead of a connection retrying forever.
_URL_FORMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "database_url": _DSN,
    "app_database_url": _DSN,
    "nats_url": ("a nats:// or tls:// URL with a host", ("nats", "tls", "ws", "wss")),
    "s3_endpoint": ("an http:// or https:// URL with a host", ("http", "https")),
}


def check_url(field: str, value: str) -> str:
    """Refuse a service address that cannot be one, without echoing it.

    Raises:
        PydanticCustomError: saying what the setting must be.
    """
    wanted, schemes = _URL_FORMS[field]
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise PydanticCustomError(
            "url", f"must be {wanted}; the port is not valid"
        ) from None
    # a DSN may leave the host out (a unix socket); the others need one
    host_ok = bool(parts.hostname) or schemes is _DSN[1]
    if parts.scheme.lower() not in schemes or not host_ok:
        raise PydanticCustomError("url", f"must be {wanted}")
    if schemes is _DSN[1]:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(value)
        except psycopg.ProgrammingError:  # its message may quote a password
            raise PydanticCustomError(
                "url", f"must be {wanted} that PostgreSQL can parse"
            ) from None
    return value


PERSONAL_DATA_KEY_REQUIRED = (
    "ANIMUS_PERSONAL_DATA_KEY: required when ANIMUS_ENVIRONMENT is production "
    "(the base64 of 32 random bytes, e.g. from `openssl rand -base64 32`)"
)


def decode_key(text: str) -> bytes | None:
    """The 32 bytes of a base64 key text, or None if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


class DevUser(BaseModel):
    """A dev-mode user with a display name and, optionally, an email."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, min_length=3, max_length=320)


class Settings(BaseSettings):
    """Every knob of every process. Unset services mean "embedded"."""

    model_config = SettingsConfigDict(env_prefix="ANIMUS_", extra="ignore", frozen=True)

    environment: Literal["dev", "test", "production"] = "dev"
    auth_mode: Literal["dev"] = "dev"
    dev_tokens: dict[str, str | DevUser] = Field(
        default_factory=lambda: {"dev-token": "dev"},
        description='dev auth: bearer token -> user name, or {"name", "email"}',
    )
    personal_data_key: SecretStr | None = Field(
        default=None,
        description="base64 of 32 random bytes: wraps every data subject's key "
        "(crypto-shredding); unset outside production, one is made once under "
        "<home>/keys/",
    )
    home: Path = Field(default=Path(".animus"), description="embedded data root")
    instance_id: str | None = Field(
        default=None,
        description="set by `animus up` for its processes; the gateway reports it "
        "in the INSTANCE_HEADER of /healthz, so a client can tell which stack answers",
    )

    database_url: str | None = Field(
        default=None, description="DSN of the owner role, used by migrate"
    )
    app_database_url: str | None = Field(
        default=None,
        description="DSN of the INSERT/SELECT-only role; derived when unset",
    )
    nats_url: str | None = None
    nats_wait_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a process that cannot work without NATS (relay, "
        "coordinator, executor) tries to reach it at start before giving up",
    )
    s3_endpoint: str | None = None
    s3_access_key: str = "animus"
    s3_secret_key: SecretStr = SecretStr("animus-secret")
    s3_region: str = "us-east-1"
    s3_bucket: str = "animus"

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8700, ge=1, le=65535)
    embedded_postgres_port: int = Field(default=55432, ge=1, le=65535)
    embedded_nats_port: int = Field(default=42220, ge=1, le=65535)
    embedded_s3_port: int = Field(default=48333, ge=1, le=65535)

    executor_kind: Literal["local"] = "local"
    executor_workdir: Path | None = None
    executor_concurrency: int = Field(default=2, ge=1, le=64)
    allow_unsandboxed: bool = False
    run_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often the executor reports that a workload is alive",
    )
    run_lost_after_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Silence (receiver's clock) after which a running run is lost",
    )

    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_upload_bytes: int = Field(default=50 * 1024**3, ge=1)
    upload_part_bytes: int = Field(default=16 * 1024**2, ge=5 * 1024**2)
    storage_orphan_after_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Age after which the sweeper aborts an idle multipart upload "
        "and deletes a staging object or a blob that no event names",
    )
    storage_sweep_interval_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How often the gateway sweeps object storage; 0 never",
    )
    as_of_snapshots: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Snapshots of the read models kept for reads as_of a past "
        "position; the least recently used beyond this are dropped",
    )
    checkpoint_signing_key: SecretStr | None = Field(
        default=None,
        description="The Ed25519 key that signs checkpoints: base64 of its 32-byte "
        "seed, or the path of a PEM (PKCS#8) file holding it. Unset in dev: one "
        "is generated once into <home>/keys/; refused unset in production",
    )
    checkpoint_verify_key: str | None = Field(
        default=None,
        description="The public key that verifies checkpoints, as the vkey "
        "`animus evidence key` prints (name+keyhash+key, name = "
        "ANIMUS_CHECKPOINT_ORIGIN). Processes that only verify (gateway, "
        "animus verify, bundle export) use it and need no signing key; unset, "
        "they derive it from the signing key. Set with the signing key, both "
        "must be one pair",
    )
    checkpoint_origin: str = Field(
        default="animus-datalab.local/events",
        description="The log's name in signed checkpoints and its public key",
        pattern=r"^[^\s+]+$",
    )
    checkpoint_every_events: int = Field(
        default=1000, ge=1, description="Sign a checkpoint every this many events"
    )
    checkpoint_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="... and at least this often while new events arrive",
    )
    audit_retention_days: float = Field(
        default=3650,
        ge=0,
        description="How long the SIEM stream (JetStream ANIMUS_AUDIT) keeps "
        "records; 0 keeps them for ever",
    )
    syslog_url: str | None = Field(
        default=None,
        description="Forward every audit record to this syslog collector as RFC "
        "5424 over TCP: tcp://host:port, or tls://host:port for RFC 5425",
    )
    syslog_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle that verifies a tls:// collector "
        "(unset: the system's)",
    )
    syslog_cert_file: Path | None = Field(
        default=None, description="PEM client certificate for a tls:// collector"
    )
    syslog_key_file: Path | None = Field(
        default=None, description="PEM key of ANIMUS_SYSLOG_CERT_FILE"
    )
    syslog_app_name: str = Field(
        default="animus", pattern=r"^[!-~]{1,48}$", description="RFC 5424 APP-NAME"
    )
    syslog_hostname: str | None = Field(
        default=None,
        pattern=r"^[!-~]{1,255}$",
        description="RFC 5424 HOSTNAME (unset: this machine's name)",
    )
    syslog_max_message_bytes: int = Field(
        default=8192,
        ge=2048,
        le=1_048_576,
        description="Largest syslog message sent; a longer record is sent as "
        "a summary without data, metadata and canonical",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("database_url", "app_database_url", "nats_url", "s3_endpoint")
    @classmethod
    def _check_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None  # set but empty: unset, so `animus up` embeds the service
        return check_url(str(info.field_name), value.strip())

    @field_validator("syslog_url")
    @classmethod
    def _check_syslog_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("tcp", "tls") or not parts.hostname or not port:
            wanted = "must be tcp://host:port or tls://host:port"
            raise PydanticCustomError("url", wanted)
        return value.strip()

    @field_validator("personal_data_key")
    @classmethod
    def _check_personal_data_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if decode_key(value.get_secret_value()) is None:
            raise PydanticCustomError("key", "must be the base64 of 32 bytes")
        return value

    @field_validator("checkpoint_signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from animus.evidence.keys import parse_signing_key

        try:
            parse_signing_key(value.get_secret_value())
        except ValueError as exc:  # its message never quotes the key
            raise PydanticCustomError("signing_key", str(exc)) from None
        return value

    @field_validator("checkpoint_verify_key")
    @classmethod
    def _check_verify_key(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from animus.evidence.note import NoteError, parse_vkey

        try:
            return str(parse_vkey(value))
        except NoteError as exc:
            raise PydanticCustomError(
                "vkey",
                "not a verifier key ({detail}); expected name+keyhash+key as "
                "`animus evidence key` prints it",
                {"detail": exc.detail},
            ) from None

    @model_validator(mode="after")
    def _check_checkpoint_keys(self) -> Settings:
        """The verify key is named after the origin and pairs the signing key."""
        if self.checkpoint_verify_key is None:
            return self
        from animus.evidence.keys import parse_signing_key
        from animus.evidence.note import parse_vkey, vkey_of

        name = parse_vkey(self.checkpoint_verify_key).name
        if name != self.checkpoint_origin:
            raise ValueError(
                f"ANIMUS_CHECKPOINT_VERIFY_KEY: named {name!r}, but "
                f"ANIMUS_CHECKPOINT_ORIGIN is {self.checkpoint_origin!r}; a "
                "checkpoint's key is named after its origin"
            )
        if self.checkpoint_signing_key is None:
            return self
        private = parse_signing_key(self.checkpoint_signing_key.get_secret_value())
        if vkey_of(private.public_key(), name) != self.checkpoint_verify_key:
            raise ValueError(
                "ANIMUS_CHECKPOINT_VERIFY_KEY does not match "
                "ANIMUS_CHECKPOINT_SIGNING_KEY: it is not the public half of the "
                "signing key"
            )
        return self

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.environment == "production" and self.auth_mode == "dev":
            raise ValueError(
                "ANIMUS_AUTH_MODE: 'dev' is refused when ANIMUS_ENVIRONMENT is "
                "production"
            )
        if self.run_lost_after_seconds < 2 * self.run_heartbeat_seconds:
            raise ValueError(
                "ANIMUS_RUN_LOST_AFTER_SECONDS: must be at least twice "
                "ANIMUS_RUN_HEARTBEAT_SECONDS"
            )
        if self.environment == "production" and self.allow_unsandboxed:
            raise ValueError(
                "ANIMUS_ALLOW_UNSANDBOXED: refused when ANIMUS_ENVIRONMENT is "
                "production"
            )
        if self.environment == "production" and self.personal_data_key is None:
            raise ValueError(PERSONAL_DATA_KEY_REQUIRED)
        return self

    @property
    def workdir(self) -> Path:
        return self.executor_workdir or self.home / "executor"


# ANIMUS_* variables that are not settings: the ones the executor hands to
# workloads, and the test suite's and benchmarks' own.
_NOT_SETTINGS = ("ANIMUS_TEST_", "ANIMUS_BENCH_")
WORKLOAD_VARIABLES = frozenset(
    {"ANIMUS_RUN_ID", "ANIMUS_ATTEMPT", "ANIMUS_INPUTS", "ANIMUS_OUTPUTS"}
    | {"ANIMUS_PARAMS"}
)


def check_unknown_variables(environ: Mapping[str, str]) -> None:
    """Refuse an `ANIMUS_` variable that names no setting (a typo, usually).

    Raises:
        ConfigurationError: naming the variable and the closest setting.
    """
    known = {f"ANIMUS_{name.upper()}" for name in Settings.model_fields}
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("ANIMUS_") or upper in known:
            continue
        if upper.startswith(_NOT_SETTINGS) or upper in WORKLOAD_VARIABLES:
            continue
        close = difflib.get_close_matches(upper, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigurationError(f"{variable}: not a setting{hint}")


def load_settings(**overrides: object) -> Settings:
    """Load settings, turning any mistake into one ConfigurationError line."""
    check_unknown_variables(os.environ)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # a setting of a complex type (ANIMUS_DEV_TOKENS) whose text is not JSON
        found = re.search(r'field "(\w+)"', str(exc))
        name = f"ANIMUS_{found.group(1).upper()}" if found else "a setting"
        raise ConfigurationError(f"{name}: not valid JSON") from exc
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:
            # a check across settings names its setting in its own message
            cause = first.get("ctx", {}).get("error")
            raise ConfigurationError(str(cause or first["msg"])) from exc
        name = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"ANIMUS_{name.upper()}: {first['msg']}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
