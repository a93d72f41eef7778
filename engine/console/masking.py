"""Phone numbers, masked: every role sees ``+4477•••••123``; an operator (or admin) may unmask
one, which is audited.

The page never holds the number behind a masked one: the ``num`` filter hands the unmask action
a *reference*, the number encrypted under the console's key (``p:csecret``, made once in Redis,
so every API process reads the references of every other): an 8-byte nonce, the number XORed
with HMAC-SHA256(key, nonce) as the key stream, and a 10-byte HMAC tag over both. ``POST
/console/api/unmask`` (operator) opens it and logs who saw which contact.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from aiohttp import web

from engine.console.audit import audit
from engine.console.auth import require
from engine.console.web import services, state
from engine.core import keys
from engine.core.errors import Unprocessable
from engine.core.numbers import mask as log_mask

#: The character that stands for a hidden digit.
DOT = "\u2022"
_NONCE, _TAG = 8, 10


def mask(number: str) -> str:
    """``+447700900123`` -> ``+4477•••••123`` (the country prefix and the last three digits)."""
    return log_mask(number).replace("*", DOT)


async def load_secret(request: web.Request) -> bytes:
    """The console's key (made on first use: SET NX, so all API processes share one)."""
    st = state(request)
    if not st.secret:
        r = services(request).store.redis
        await r.set(keys.console_secret(), secrets.token_bytes(32), nx=True)
        raw = await r.get(keys.console_secret())
        st.secret = raw if isinstance(raw, bytes) else b""
    return st.secret


def seal(secret: bytes, number: str) -> str:
    """A reference to ``number`` that only the holder of ``secret`` can open."""
    nonce = secrets.token_bytes(_NONCE)
    data = number.encode()[:32]
    stream = hmac.new(secret, b"k" + nonce, hashlib.sha256).digest()
    body = bytes(a ^ b for a, b in zip(data, stream, strict=False))
    tag = hmac.new(secret, b"t" + nonce + body, hashlib.sha256).digest()[:_TAG]
    return base64.urlsafe_b64encode(nonce + body + tag).decode().rstrip("=")


def unseal(secret: bytes, ref: str) -> str | None:
    """The number behind ``ref``, or None when it is not one of ours (or was altered)."""
    try:
        raw = base64.urlsafe_b64decode(ref + "=" * (-len(ref) % 4))
    except ValueError:
        return None
    if len(raw) < _NONCE + 1 + _TAG or len(raw) > _NONCE + 32 + _TAG:
        return None
    nonce, body, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
    want = hmac.new(secret, b"t" + nonce + body, hashlib.sha256).digest()[:_TAG]
    if not hmac.compare_digest(tag, want):
        return None
    stream = hmac.new(secret, b"k" + nonce, hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(body, stream, strict=False)).decode(errors="replace")


async def post_unmask(request: web.Request) -> web.Response:
    """``POST /console/api/unmask`` ``{"ref": "..."}`` (operator): the number behind a masked one."""
    require(request, "operator")
    try:
        body = await request.json()
    except ValueError:
        raise Unprocessable("ref", 'send a JSON body {"ref": "..."}') from None
    ref = body.get("ref") if isinstance(body, dict) else None
    if not isinstance(ref, str) or not ref:
        raise Unprocessable("ref", "send the ref the page gave the masked number")
    number = unseal(await load_secret(request), ref)
    if number is None:
        raise Unprocessable("ref", "not a reference this console made")
    await audit(request, "unmask", contact=keys.number_digest(number), masked=mask(number))
    return web.json_response({"number": number})
