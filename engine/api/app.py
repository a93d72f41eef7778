"""Building the aiohttp application: middlewares, routes, and the runtime under a typed key."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from engine.api.common import ROUTES_SERVED, RUNTIME, check_api_key, json_response
from engine.api.ports import ApiServices
from engine.api.routes import ROUTES
from engine.core.errors import ApiError, NotFound, NotReplicated, PayloadTooLarge

log = logging.getLogger(__name__)

#: Routes anyone may call (probes and scrapers); everything under /v1 needs a bearer key.
PUBLIC = frozenset({"/healthz", "/metrics", "/v1/openapi.json"})
#: Retry-After (s) of a 503 for writes the replicas did not confirm (redis.wait_replicas): a
#: replica back, or a Sentinel failover done, takes seconds.
RETRY_AFTER_NOT_REPLICATED_S = 5
#: What a process without the API role serves (a worker's or a sender's probes and scrapes).
OPS = frozenset({"/healthz", "/metrics"})
#: Provider webhooks: the route checks the connector's own scheme, or the bearer key.
WEBHOOKS = ("/v1/inbound/", "/v1/receipts/")
#: The browser console (engine/console, mounted by the app): its own sessions, no bearer key.
CONSOLE = "/console"


def _error(exc: ApiError) -> web.Response:
    return json_response({"error": {"code": exc.code, "message": exc.message}}, exc.status)


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal is ``{"error": {"code", "message"}}`` with its status; every request is timed."""
    t0 = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = _error(exc)
    except web.HTTPRequestEntityTooLarge:
        resp = _error(PayloadTooLarge(f"body is larger than {request.client_max_size} bytes"))
    except web.HTTPNotFound:
        resp = _error(NotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        resp = _error(
            ApiError(f"{request.method} is not allowed here (allowed: {allowed})", code="method_not_allowed")
        )
        resp.set_status(405)
        resp.headers["Allow"] = allowed  # RFC 9110 15.5.6: a 405 must say what is allowed
    except web.HTTPException as exc:
        resp = json_response({"error": {"code": "http_error", "message": exc.reason}}, exc.status)
    except NotReplicated as exc:
        # Written, but not yet on redis.wait_replicas replicas: not acknowledged. The retry is
        # safe for texts (kept once per provider id; answered 200 once the replicas have it).
        log.warning("not acknowledged on %s %s: %s", request.method, request.path, exc)
        resp = json_response({"error": {"code": "not_replicated", "message": f"{exc}; retry later"}}, 503)
        resp.headers["Retry-After"] = str(RETRY_AFTER_NOT_REPLICATED_S)
    except (RedisError, OSError) as exc:
        # Nothing was accepted: 503 tells the provider to retry later.
        log.warning("Redis unavailable on %s %s: %s", request.method, request.path, exc)
        resp = json_response(
            {"error": {"code": "unavailable", "message": "storage unavailable; retry later"}}, 503
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = json_response(
            {"error": {"code": "internal", "message": "internal error; see the server log"}}, 500
        )
    request.app[RUNTIME].metrics.http_request(route, resp.status, time.perf_counter() - t0)
    return resp


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC or request.path.startswith(WEBHOOKS):
        return await handler(request)
    if request.path == CONSOLE or request.path.startswith(CONSOLE + "/"):
        return await handler(request)  # the console checks its own session (never an API key)
    check_api_key(request)
    return await handler(request)


def build_app(rt: ApiServices, *, ops_only: bool = False) -> web.Application:
    """The API; ``ops_only``: only /healthz and /metrics (a process without the api role)."""
    app = web.Application(
        middlewares=[errors_and_metrics, bearer_auth], client_max_size=rt.config.http.max_body_bytes
    )
    app[RUNTIME] = rt
    routes = [r for r in ROUTES if r[1] in OPS] if ops_only else ROUTES
    app[ROUTES_SERVED] = tuple(routes)
    for method, path, handler in routes:
        if method == "GET":
            app.router.add_get(path, handler)  # and HEAD, as ever
        else:
            app.router.add_route(method, path, handler)
    return app
