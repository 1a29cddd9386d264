"""The Litestar application: routes, guard, limits, errors, OpenAPI, lifespan.

`create_app(settings)` opens its services in the lifespan, and runs the
storage sweeper there (`animus.sweeper`: abandoned uploads, blobs no event
names); tests pass their own `GatewayServices` and sweep by hand. Protected
routes sit under one router that documents the bearer scheme; the
`PermissionGuard` on the app refuses any route that declares no permission,
and the app refuses to start with one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from animus.settings import Settings
from animus.sweeper import sweeping
from gateway import (
    audit,
    bundles,
    datasets,
    evidence,
    health,
    personal,
    projects,
    runs,
)
from gateway.auth import (
    PERMISSION_OPT,
    DevTokenAuthenticator,
    Permission,
    PermissionGuard,
    check_declarations,
)
from gateway.context import RequestContextMiddleware
from gateway.errors import problem_details_plugin
from gateway.limits import check_json_body
from gateway.params import all_of, refuse_repeated_parameters
from gateway.routing import provide_services, provide_settings
from gateway.services import GatewayServices, open_services

DOCS_PATH = "/docs"
BEARER = "bearer"


def create_app(
    settings: Settings, *, services: GatewayServices | None = None
) -> Litestar:
    """Build the gateway.

    Args:
        settings: limits, auth mode and tokens, and the services to open.
        services: already open services (tests); opened from settings if None.

    Raises:
        ConfigurationError: a route declares no known permission.
    """
    state = State({"settings": settings, "services": services})
    app = Litestar(
        route_handlers=[*health.ROUTES, _protected_router()],
        state=state,
        lifespan=[] if services is not None else [_lifespan],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
        },
        guards=[PermissionGuard(DevTokenAuthenticator(settings.dev_tokens))],
        middleware=[RequestContextMiddleware()],
        before_request=all_of(refuse_repeated_parameters, check_json_body),
        request_max_body_size=settings.max_body_bytes,
        plugins=[problem_details_plugin()],
        openapi_config=openapi_config(),
        logging_config=None,
        debug=False,
    )
    check_declarations(app)
    return app


def _protected_router() -> Router:
    return Router(
        "/",
        route_handlers=[
            *projects.ROUTES,
            *datasets.ROUTES,
            *runs.ROUTES,
            *personal.ROUTES,
            *bundles.ROUTES,
            *evidence.ROUTES,
            *audit.ROUTES,
        ],
        security=[{BEARER: []}],
    )


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with (
        open_services(settings) as services,
        sweeping(services.blobs, services.pool.conninfo, settings),
    ):
        app.state.services = services
        try:
            yield
        finally:
            app.state.services = None


def openapi_config() -> OpenAPIConfig:
    """The OpenAPI document at /docs/openapi.json, Swagger UI at /docs."""
    return OpenAPIConfig(
        title="Animus Datalab",
        version=_version(),
        description="An ML laboratory that proves what it ran.",
        components=Components(
            security_schemes={
                BEARER: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="dev mode: a token from ANIMUS_DEV_TOKENS",
                )
            }
        ),
        render_plugins=[SwaggerRenderPlugin(path="/")],
        openapi_router=Router(
            DOCS_PATH,
            route_handlers=[],
            include_in_schema=False,
            opt={PERMISSION_OPT: Permission.PUBLIC},
        ),
    )


def _version() -> str:
    try:
        return version("animus-datalab")
    except PackageNotFoundError:
        return "0.0.0"
