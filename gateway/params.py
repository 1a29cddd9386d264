"""Query parameters are given once.

Litestar takes the last of a repeated query parameter its route declares as
a single value (`?as_of=23&as_of=24` reads as of 24), so a client that
repeats one by mistake gets an answer to a question it did not ask.
`refuse_repeated_parameters`, a `before_request` hook on the app (it runs
after the guard, for every route), refuses a repeated query parameter that
the route takes as one value, with a 400 `invalid-parameter` problem naming
it. A parameter the route takes as a list (`list[str]`) may repeat; one the
route does not take is ignored, as Litestar ignores it.

Which parameters a route takes as one value comes from Litestar's own
reading of the handler's signature (the `KwargsModel` each route keeps per
method), so it is what Litestar will parse; it is read once per app, on the
first request. Parameters taken only by a dependency are not seen (no
dependency of the gateway takes one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from litestar import Litestar, Request
from litestar.enums import ParamType
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from gateway.errors import InvalidParameter

BeforeRequest = Callable[[Request[Any, Any, Any]], Awaitable[Any]]

_STATE_KEY = "scalar_query_parameters"


def scalar_query_parameters(
    app: Litestar,
) -> dict[HTTPRouteHandler, frozenset[str]]:
    """Per route handler, the query parameters it takes as one value."""
    table: dict[HTTPRouteHandler, frozenset[str]] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler, model in route.route_handler_map.values():
            table[handler] = frozenset(
                param.field_alias
                for param in model.expected_query_params
                if param.param_type is ParamType.QUERY and not param.is_sequence
            )
    return table


def _scalars_of(request: Request[Any, Any, Any]) -> frozenset[str]:
    state = request.app.state
    table: Mapping[HTTPRouteHandler, frozenset[str]] | None = state.get(_STATE_KEY)
    if table is None:  # the first request; the same table if two race here
        table = scalar_query_parameters(request.app)
        state[_STATE_KEY] = table
    return table.get(request.route_handler, frozenset())


async def refuse_repeated_parameters(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook: refuse a single-valued query parameter given twice.

    Raises:
        InvalidParameter: naming each repeated parameter (400).
    """
    query = request.query_params
    repeated = sorted(
        name for name in _scalars_of(request) if len(query.getall(name, [])) > 1
    )
    if repeated:
        raise InvalidParameter(
            f"repeated parameter: {', '.join(repeated)}",
            errors=[
                {"field": name, "message": "give this parameter once"}
                for name in repeated
            ],
        )


def all_of(*hooks: BeforeRequest) -> BeforeRequest:
    """One `before_request` hook running `hooks` in order.

    Litestar takes one hook per layer; the first that answers (returns
    something other than None) answers the request.
    """

    async def hook(request: Request[Any, Any, Any]) -> Any:
        for each in hooks:
            answer = await each(request)
            if answer is not None:
                return answer
        return None

    return hook
