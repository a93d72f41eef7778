"""Every error Parley raises on purpose, in one tree.

    ParleyError
    ├── ConfigError            bad or missing configuration key (one line, names the key)
    │   └── DataDirInUse       the embedded Redis data directory is another Parley's (its pid)
    ├── RedisUnavailable       no Redis to talk to (embedded server missing or failed to start)
    ├── LayoutError            the database holds another key layout (``parley migrate`` converts)
    │   └── MigrationRefused   ``parley migrate`` cannot run now (engine running, lanes not drained)
    ├── FlowError              a flow file is invalid (names file, line, node)
    ├── FlowErrors             every problem found in one or more flow files
    ├── RenderError            a template could not be rendered for a contact
    ├── ApiError               an HTTP API request is refused; carries status and code
    │   ├── BadRequest         400  body is not JSON / not an object
    │   ├── Unauthorized       401  missing or wrong bearer key
    │   ├── NotFound           404  unknown contact, flow, gateway, route
    │   ├── Conflict           409  idempotency key reused with a different payload
    │   ├── PayloadTooLarge    413  body over http.max_body_bytes
    │   ├── UnsupportedMediaType 415  a body in a format the route does not read
    │   └── Unprocessable      422  JSON is fine but a field is wrong (names the field)
    ├── GatewayError           a send failed; says whether retrying can help and whether the
    │   │                      provider may have taken the message anyway (``ambiguous``)
    │   ├── GatewayTimeout         retryable, ambiguous
    │   ├── GatewayUnavailable     retryable (connection refused, 503: not taken; 500/502/504,
    │   │   │                      connection dropped mid-request: ambiguous); may carry Retry-After
    │   │   └── GatewayThrottled   a rate signal (429, SMPP throttling): the provider is up and asks
    │   │                          us to slow down; pauses the connector, never opens the breaker
    │   └── GatewayRejected        permanent (4xx, invalid destination)
    └── WebhookRejected        401  a provider webhook without a valid signature or credentials

Library exceptions are translated at the boundary (``raise GatewayTimeout(...) from exc``) so
callers decide on these types, never on aiohttp's or redis-py's.
"""

from __future__ import annotations

from typing import Any


class ParleyError(Exception):
    """Base of every deliberate Parley error."""


class ConfigError(ParleyError):
    """A configuration key is missing, unknown or of the wrong type."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config: {key}: {problem}")


class DataDirInUse(ConfigError):
    """Another live Parley holds the embedded Redis data directory (``pid``, if it wrote one)."""

    def __init__(self, data_dir: str, pid: int | None) -> None:
        self.data_dir, self.pid = data_dir, pid
        owner = f"pid {pid}" if pid else "another process"
        super().__init__(
            "redis.embedded_dir",
            f"{data_dir} is in use by {owner} (another parley run on this data); "
            "stop it, or give this one its own redis.embedded_dir or a redis.url",
        )


class RedisUnavailable(ParleyError):
    """Redis cannot be reached or the embedded server cannot be started."""


class LayoutError(ParleyError):
    """The database holds another key layout than this release's (engine/app/migrate.py)."""


class MigrationRefused(LayoutError):
    """``parley migrate`` cannot run now; nothing was changed."""


class FlowError(ParleyError):
    """A flow definition is invalid. ``str()`` is ``file:line: node: problem``."""

    def __init__(self, file: str, line: int | None, node: str | None, problem: str) -> None:
        self.file = file
        self.line = line
        self.node = node
        self.problem = problem
        where = f"{file}:{line}" if line else file
        who = f" node {node!r}:" if node else ""
        super().__init__(f"{where}:{who} {problem}")


class FlowErrors(ParleyError):
    """All problems found while loading flows; ``str()`` is one line per problem."""

    def __init__(self, errors: list[FlowError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class RenderError(ParleyError):
    """A message template failed for this contact (a value of the wrong type, a refusal of the
    sandbox, a message over the size limit). ``reason`` is short and safe to store in an outcome
    event; the runner adds the ``node`` it failed at and the ``state`` of the run it failed in
    (a new run's, at a journey's first node), so the failure is blamed on that run."""

    def __init__(self, reason: str, template: str = "") -> None:
        self.reason = reason if len(reason) <= 200 else reason[:199] + "…"
        self.node: str | None = None
        self.state: dict[str, Any] | None = None
        super().__init__(f"{self.reason} in template {template[:200]!r}" if template else self.reason)


class ApiError(ParleyError):
    """An HTTP API request is refused. Rendered as ``{"error": {"code", "message"}}``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(ApiError):
    status = 422
    code = "invalid"

    def __init__(self, field: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{field}: {message}", code=code)
        self.field = field


class GatewayError(ParleyError):
    """A send through a gateway failed. ``retryable`` says whether trying again can help;
    ``ambiguous`` whether the provider may have taken the message although we saw a failure (then
    it is retried on the same connector with the same idempotency key, never failed over, so it
    cannot go out through two connectors); ``retry_after`` is the provider's own wait (seconds)."""

    retryable = False
    ambiguous = False

    def __init__(
        self,
        gateway: str,
        message: str,
        *,
        status: int | str | None = None,
        retry_after: float | None = None,
        ambiguous: bool | None = None,
    ) -> None:
        super().__init__(f"gateway {gateway}: {message}")
        self.gateway = gateway
        self.status = status
        self.retry_after = retry_after
        if ambiguous is not None:
            self.ambiguous = ambiguous


class GatewayTimeout(GatewayError):
    retryable = True
    ambiguous = True


class GatewayUnavailable(GatewayError):
    retryable = True


class GatewayThrottled(GatewayUnavailable):
    """The provider answered "too fast" (HTTP 429, ESME_RTHROTTLED): not taken, and not a sign of
    ill health. ``retry_after`` is how long it asked us to wait (None: it did not say)."""

    ambiguous = False


class GatewayRejected(GatewayError):
    retryable = False


class WebhookRejected(Unauthorized):
    """A provider's webhook failed its connector's authentication (signature, timestamp, password)."""
