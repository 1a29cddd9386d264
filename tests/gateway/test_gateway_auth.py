"""Authentication and deny-by-default permissions (DESIGN.md, Security)."""

from __future__ import annotations

import pytest
from gwtest import ALICE, Client, new_id
from litestar import Litestar, get
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from animus.errors import ConfigurationError
from animus.personal import is_subject
from animus.settings import Settings
from gateway.app import create_app
from gateway.auth import (
    PERMISSION_OPT,
    DevTokenAuthenticator,
    Permission,
    PermissionGuard,
    check_declarations,
    declared_permission,
    is_generated_options,
)
from gateway.errors import problem_details_plugin

PUBLIC_PATHS = {"/healthz", "/readyz", "/docs"}


class TestPermissionDeclarations:
    def test_every_route_declares_a_known_permission(self, app: Litestar) -> None:
        undeclared = [
            (route.path, sorted(handler.http_methods))
            for route in app.routes
            for handler in getattr(route, "route_handlers", ())
            if not is_generated_options(handler)
            and declared_permission(handler) is None
        ]
        assert undeclared == []

    def test_only_health_and_docs_routes_are_public(self, app: Litestar) -> None:
        public = {
            route.path
            for route in app.routes
            for handler in getattr(route, "route_handlers", ())
            if declared_permission(handler) is Permission.PUBLIC
        }
        assert {path.split("/{")[0] for path in public} <= PUBLIC_PATHS | {
            "/docs/openapi.json",
            "/docs/oauth2-redirect.html",
        }

    def test_the_gateway_builds_with_every_route_declared(self) -> None:
        check_declarations(create_app(Settings()))

    def test_an_undeclared_route_stops_the_start(self) -> None:
        @get("/undeclared")
        async def undeclared() -> None:
            return None

        with pytest.raises(ConfigurationError, match="/undeclared"):
            check_declarations(Litestar([undeclared]))

    async def test_a_route_without_permission_is_refused_at_runtime(self) -> None:
        @get("/undeclared")
        async def undeclared() -> dict[str, str]:
            return {"secret": "x"}

        @get("/declared", opt={PERMISSION_OPT: Permission.PUBLIC})
        async def declared() -> dict[str, str]:
            return {"ok": "yes"}

        app = Litestar(
            [undeclared, declared],
            guards=[PermissionGuard(DevTokenAuthenticator({"t": "u"}))],
            plugins=[problem_details_plugin()],
        )
        async with AsyncTestClient(app) as client:
            refused = await client.get(
                "/undeclared", headers={"Authorization": "Bearer t"}
            )
            allowed = await client.get("/declared")
        assert refused.status_code == 403
        assert "secret" not in refused.text
        assert allowed.status_code == 200


class TestBearerTokens:
    async def test_a_missing_token_answers_401_with_a_challenge(
        self, client: Client
    ) -> None:
        answer = await client.get("/projects")
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["status"] == 401

    async def test_an_unknown_token_answers_401_invalid_token(
        self, client: Client
    ) -> None:
        answer = await client.get(
            "/projects", headers={"Authorization": "Bearer wrong"}
        )
        assert answer.status_code == 401
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]

    async def test_another_scheme_is_refused(self, client: Client) -> None:
        answer = await client.get(
            "/projects", headers={"Authorization": "Basic YWxpY2U6eA=="}
        )
        assert answer.status_code == 401

    async def test_a_known_token_is_accepted_and_its_user_logged(
        self, client: Client
    ) -> None:
        # a command gives alice her subject (reads alone make none)
        made = await client.post(
            "/projects", json={"project_id": new_id("p"), "name": "P"}, headers=ALICE
        )
        assert made.status_code == 201, made.text
        with capture_logs() as logs:
            answer = await client.get("/projects", headers=ALICE)
        assert answer.status_code == 200
        lines = [line for line in logs if line["event"] == "request"]
        # the pseudonymous subject, never the user's name
        assert [is_subject(line["actor"]) for line in lines] == [True]
        assert "alice" not in repr(lines)

    async def test_tokens_never_reach_the_logs(self, client: Client) -> None:
        with capture_logs() as logs:
            await client.get("/projects", headers=ALICE)
            await client.get("/projects", headers={"Authorization": "Bearer wrong"})
        text = repr(logs)
        assert "alice-token" not in text
        assert "wrong" not in text

    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/docs"])
    async def test_health_and_docs_need_no_token(
        self, client: Client, path: str
    ) -> None:
        answer = await client.get(path)
        assert answer.status_code == 200, answer.text
