"""Provider webhooks: ``POST /v1/inbound/{gateway}`` (texts) and ``POST /v1/receipts/{gateway}``.

Each connector reads its own provider's shape and checks its own scheme (a timestamped HMAC
signature, a provider signature, basic auth); a connector without one asks for the API bearer
key like every /v1 route, and so does a gateway name that is not configured (only a caller with
the key learns it is unknown: names cannot be probed). A text is acknowledged (2xx) only once it
is durably in Redis.
"""

from __future__ import annotations

import time

from aiohttp import web

from engine.api.common import check_api_key, json_response, number_param, runtime
from engine.api.schema import GATEWAY, Answer, Operation, operation
from engine.conversation import intake
from engine.core.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from gateways.base import Gateway, Webhook
from gateways.receipts import apply_receipt

MAX_TEXT_CHARS = 10_000
MAX_ID_CHARS = 128

#: A provider webhook's body is the connector's own shape (docs/gateways.md): the generic
#: connector's JSON object or list of them, Jasmin's and Twilio's forms. Each connector parses it
#: (``parse_inbound``), so it has no model here: the description says what the route takes.
PROVIDER_BODY = {
    "required": True,
    "description": "the shape of the gateway's connector (docs/gateways.md)",
    "content": {
        "application/json": {
            "schema": {"type": ["object", "array"], "description": "one message, or a list taken whole"}
        },
        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
    },
}


async def _webhook(request: web.Request) -> tuple[Gateway, Webhook]:
    rt = runtime(request)
    name = request.match_info["gateway"]
    gw = rt.gateways.get(name)
    if gw is None:
        # Answered as a known gateway without a scheme of its own answers (the bearer key
        # first), so a caller without credentials cannot probe which gateway names exist.
        check_api_key(request)
        raise NotFound(f"no gateway {name!r}", code="gateway_not_found")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body is larger than {request.client_max_size} bytes") from None
    public = getattr(gw.config, "public_url", "")
    url = public.rstrip("/") + request.path_qs if public else str(request.url)
    hook = Webhook(request.method, url, request.headers, body, request.query)
    if gw.webhook_auth:
        gw.authenticate(hook, time.time())
    else:
        check_api_key(request)
    return gw, hook


def _answer(gw: Gateway, data: object, status: int, *, receipt: bool = False) -> web.Response:
    custom = gw.receipt_answer() if receipt else gw.inbound_answer()
    if custom is None:
        return json_response(data, status)
    return web.Response(body=custom.body, status=custom.status, content_type=custom.content_type)


@operation(Operation(
    "receive_texts", "provider webhooks",
    "A provider's webhook: customers' texts (the connector's own shape and auth)",
    {200: Answer("a repeat of an accepted text"), 202: Answer("durably accepted")},
    errors=(400, 404, 409, 413, 401, 422, 503), params=(GATEWAY,), body=PROVIDER_BODY,
))  # fmt: skip
async def post_inbound(request: web.Request) -> web.Response:
    """Accept inbound texts. 202 once they are durably in Redis; 200 for a repeat of the same
    message id and text (nothing is processed twice); 409 for a reused id with another text."""
    rt = runtime(request)
    gw, hook = await _webhook(request)
    texts = gw.parse_inbound(hook)
    checked = []
    for i, t in enumerate(texts):
        where = f"[{i}]." if len(texts) > 1 else ""
        contact = number_param(rt, t.sender, f"{where}from")
        if len(t.text) > MAX_TEXT_CHARS:
            raise Unprocessable(f"{where}text", f"longer than {MAX_TEXT_CHARS} characters")
        if len(t.provider_id) > MAX_ID_CHARS:
            raise Unprocessable(f"{where}id", f"longer than {MAX_ID_CHARS} characters")
        checked.append((contact, t))
    results = []
    for contact, t in checked:
        res = await intake.accept_inbound(
            rt, gateway=gw.name, contact=contact, to=t.to, text=t.text, provider_id=t.provider_id
        )
        if res.status == "conflict":
            raise Conflict(
                f"message id {t.provider_id!r} was already accepted with a different text", code="id_reused"
            )
        results.append({"status": res.status, "event_id": res.event_id, "contact": contact})
    new = any(r["status"] == "accepted" for r in results)
    if len(results) == 1:
        return _answer(gw, results[0], 202 if new else 200)
    return _answer(gw, {"results": results}, 202 if new else 200)


@operation(Operation(
    "receive_receipts", "provider webhooks", "A provider's webhook: delivery receipts",
    {200: Answer("applied, parked or gone counts (or the provider's own answer)")},
    errors=(400, 404, 413, 401, 422, 503), params=(GATEWAY,), body=PROVIDER_BODY,
))  # fmt: skip
async def post_receipts(request: web.Request) -> web.Response:
    """Delivery receipts: each is applied to its message, or parked until its send is recorded."""
    rt = runtime(request)
    gw, hook = await _webhook(request)
    receipts = gw.parse_receipts(hook)
    counts = {"applied": 0, "parked": 0, "gone": 0}
    for r in receipts:
        counts[await apply_receipt(rt, gw.name, r)] += 1
    return _answer(gw, counts, 200, receipt=True)
