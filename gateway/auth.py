"""Authentication and the permission every route declares.

Each route handler names its permission in `opt={"permission": ...}`; the
`PermissionGuard` on the app refuses any route that names none (deny by
default), lets `PUBLIC` routes through, and otherwise authenticates the
bearer token. In `dev` auth mode the token is looked up in
`settings.dev_tokens`; role checks per project come with RBAC, the
declarations they will read exist already. Tokens are never logged.

A person's principal is then given their pseudonymous subject, and their
name, email and client address sealed with the subject's key
(`animus.personal`), once per request: events, read models and logs see
the pseudonym and the sealed fields, never the plain text. Only a command
(POST, PUT, PATCH, DELETE) may create the subject and store the sealed
profile; a read looks an existing subject up and writes nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog

from animus.errors import ConfigurationError
from animus.personal import (
    CLIENT_ADDRESS,
    SubjectKey,
    SubjectKeys,
    seal,
    sealed_actor,
)
from animus.settings import DevUser
from gateway.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

log = structlog.get_logger(__name__)

PERMISSION_OPT = "permission"


class Permission(StrEnum):
    """What a route needs; project-scoped roles will grant these."""

    PUBLIC = "public"
    PROJECT_READ = "project:read"
    PROJECT_WRITE = "project:write"
    DATASET_READ = "dataset:read"
    DATASET_WRITE = "dataset:write"
    RUN_READ = "run:read"
    RUN_WRITE = "run:write"
    EVIDENCE_READ = "evidence:read"
    """Signed checkpoints, the log's public key, inclusion and consistency proofs."""
    AUDIT_READ = "audit:read"
    """Auditors: evidence bundles, the SIEM export, reads `as_of` a past point."""
    PERSONAL_DATA_ERASE = "personal-data:erase"
    """Erase a data subject's personal fields (crypto-shredding)."""
    PERSONAL_DATA_READ = "personal-data:read"
    """Read a data subject's personal fields (name, email) in plain text."""


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling: a person or a service account.

    `identity` is stable for the person (`dev:<name>`; OIDC will give issuer
    and subject); `subject`, `actor` and `client_address` are set once the
    guard has sealed them (`seal_principal`), and stay None on a read by a
    person who has no subject (yet, or since their erasure).
    """

    name: str
    kind: str = "user"
    identity: str = ""
    email: str | None = None
    subject: str | None = None
    actor: Mapping[str, Any] | None = None
    """The sealed actor for event metadata."""
    client_address: Mapping[str, Any] | None = None
    """The caller's address, sealed with the subject's key."""

    @property
    def key(self) -> str:
        """The principal's identity in key spaces (idempotency keys)."""
        return f"{self.kind}:{self.subject or self.identity or self.name}"


COMMAND_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""The methods of commands: only these may create a person's subject."""


async def seal_principal(
    subjects: SubjectKeys,
    principal: Principal,
    client_host: str | None,
    *,
    command: bool = True,
) -> Principal:
    """The principal with its subject and its personal fields sealed.

    A command (`command=True`: it may append events that name the caller)
    makes the caller's subject on first sight and refreshes its sealed
    profile. A read only looks the subject up and writes nothing: a person
    who merely reads, or reads again after their erasure, leaves no name or
    email behind; their principal then has no subject.
    """
    identity = principal.identity or principal.name
    if command:
        key: SubjectKey | None = await subjects.subject_for(
            identity, name=principal.name, email=principal.email
        )
    else:
        key = await subjects.find(identity)
    if key is None:
        return principal
    address = (
        seal(key.data_key, key.subject, CLIENT_ADDRESS, client_host)
        if client_host
        else None
    )
    return replace(
        principal,
        subject=key.subject,
        actor=sealed_actor(key, name=principal.name, email=principal.email),
        client_address=address,
    )


class DevTokenAuthenticator:
    """`dev` auth mode: a fixed table of bearer token -> user (name, email)."""

    def __init__(self, tokens: Mapping[str, str | DevUser]) -> None:
        self._tokens = [
            (token.encode(), user if isinstance(user, DevUser) else DevUser(name=user))
            for token, user in tokens.items()
        ]

    def authenticate(self, authorization: str | None) -> Principal:
        """Resolve an `Authorization` header value to a principal.

        Raises:
            Unauthenticated: the header is missing, malformed, or unknown.
        """
        if not authorization:
            raise Unauthenticated("a bearer token is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("use the Bearer scheme", invalid_token=True)
        offered = token.strip().encode()
        user = None
        for known, candidate in self._tokens:
            if hmac.compare_digest(known, offered):
                user = candidate
        if user is None:
            raise Unauthenticated("the bearer token is not valid", invalid_token=True)
        return Principal(name=user.name, identity=f"dev:{user.name}", email=user.email)


def declared_permission(handler: BaseRouteHandler) -> Permission | None:
    """The permission a route handler declares, or None if none or unknown."""
    try:
        return Permission(handler.opt[PERMISSION_OPT])
    except (KeyError, ValueError):
        return None


def is_generated_options(handler: BaseRouteHandler) -> bool:
    """Litestar's automatic OPTIONS answer: it lists methods and runs no code."""
    methods = getattr(handler, "http_methods", set())
    return methods == {"OPTIONS"} and PERMISSION_OPT not in handler.opt


class PermissionGuard:
    """Deny by default: every route must declare a known permission."""

    def __init__(self, authenticator: DevTokenAuthenticator) -> None:
        self._authenticator = authenticator

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        # async, so Litestar calls it inline instead of in a worker thread
        if is_generated_options(handler):
            return
        permission = declared_permission(handler)
        if permission is None:
            log.warning("route_without_permission", path=connection.url.path)
            raise PermissionDenied("this route declares no permission")
        if permission is Permission.PUBLIC:
            return
        principal = self._authenticator.authenticate(
            connection.headers.get("authorization")
        )
        services = connection.app.state.get("services")
        if services is not None:
            client = connection.client
            principal = await seal_principal(
                services.subjects,
                principal,
                client.host if client else None,
                command=connection.scope.get("method") in COMMAND_METHODS,
            )
        connection.scope["user"] = principal


def check_declarations(app: Litestar) -> None:
    """Refuse to start when a route declares no permission or an unknown one.

    Raises:
        ConfigurationError: naming the first such route.
    """
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if is_generated_options(handler):
                continue
            if declared_permission(handler) is None:
                raise ConfigurationError(
                    f"route {route.path} declares no known permission"
                )
