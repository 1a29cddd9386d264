"""The HTTP gateway: Litestar routes, authentication, limits and problem details.

app          `create_app`: routes, guard, middleware, OpenAPI, lifespan
auth         bearer tokens and the permission each route declares
errors       the one exception -> problem details table
context      request id, trace span and the `request` log line
limits       JSON body size, encoding and nesting checks
idempotency  `Idempotency-Key` storage and replay
projects, datasets, runs, health   the routes
openapi      the published OpenAPI document
server       uvicorn in-process
"""

from gateway.app import create_app
from gateway.services import GatewayServices

__all__ = ["GatewayServices", "create_app"]
