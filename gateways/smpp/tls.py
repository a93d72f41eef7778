"""TLS for SMPP connections: the client context a connector binds through, and what a failed
handshake is called in logs and ``/healthz``.

The context is built once from the connector's options (``tls``, ``tls_ca``, ``tls_verify``,
``tls_verify_hostname``, ``tls_server_name``, ``tls_cert``, ``tls_key``) when the configuration
is checked, so a missing file or a key that does not match its certificate stops Parley at
start with the key named, not at the first bind. A handshake that fails at run time (the
SMSC's certificate is not signed by the trusted CA, is for another name, or the SMSC wants a
client certificate we did not give) is a connect failure like a refused TCP connection: the
bind is retried with the reconnect back-off, and sends meanwhile get ``GatewayUnavailable``
(not taken, retryable) naming it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import ConfigError

#: What a bind that the SMSC hung up on right after the TLS handshake says.
CLOSED_BEFORE_BIND = (
    "TLS: the SMSC closed the connection after the handshake, before answering the bind "
    "(does it want a client certificate: tls_cert and tls_key? is the account allowed over TLS?)"
)
#: X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH (OpenSSL's verify codes).
_NAME_MISMATCH = (62, 64)


@dataclass(frozen=True)
class TlsOptions:
    """A connector's TLS options, as its configuration gives them (see SmppConfig)."""

    enabled: bool = False
    ca: str = ""
    verify: bool = True
    verify_hostname: bool = True
    server_name: str = ""
    cert: str = ""
    key: str = ""


def client_context(where: str, o: TlsOptions) -> ssl.SSLContext | None:
    """The SSL context for ``o`` (None: TLS off). Raises ConfigError naming the key under
    ``where`` (``gateways.carrier``) for a file that cannot be read or a cert/key pair that does
    not load."""
    if not o.enabled:
        for key, value in (("tls_ca", o.ca), ("tls_cert", o.cert), ("tls_key", o.key)):
            if value:
                raise ConfigError(f"{where}.{key}", "is set but tls is off (set tls: true)")
        return None
    if o.key and not o.cert:
        raise ConfigError(f"{where}.tls_key", "given without tls_cert (the client certificate)")
    if not o.verify and o.ca:
        raise ConfigError(f"{where}.tls_ca", "is set but tls_verify is off (nothing would check it)")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if o.ca:
        _readable(where, "tls_ca", o.ca)
        try:
            ctx.load_verify_locations(cafile=o.ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"{where}.tls_ca", f"{o.ca}: not PEM certificates ({exc.reason})") from None
    if not o.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif not o.verify_hostname:
        ctx.check_hostname = False  # the chain is still verified
    if o.cert:
        _readable(where, "tls_cert", o.cert)
        if o.key:
            _readable(where, "tls_key", o.key)
        try:
            ctx.load_cert_chain(o.cert, o.key or None)
        except ssl.SSLError as exc:
            what = "tls_key" if o.key else "tls_cert"
            raise ConfigError(
                f"{where}.{what}",
                f"the client certificate and key do not load ({exc.reason or exc}); "
                "give the PEM certificate in tls_cert and its unencrypted key in tls_key",
            ) from None
    return ctx


def _readable(where: str, key: str, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}.{key}", f"no such file: {path}")
    try:
        p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}.{key}", f"cannot read {path}: {exc.strerror}") from None


def describe(exc: ssl.SSLError, server_name: str) -> str:
    """What failed in a TLS handshake, for ``last_error`` and the log: ``TLS: hostname
    mismatch: ...``, ``TLS: certificate verify failed: ...``, else OpenSSL's reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = str(exc.verify_message or exc.reason or exc).rstrip(".")
        if exc.verify_code in _NAME_MISMATCH:
            return (
                f"TLS: hostname mismatch: the SMSC's certificate is not for {server_name!r} ({message}; "
                "set tls_server_name to the name it is for)"
            )
        return f"TLS: certificate verify failed: {message} (is tls_ca the CA that signed the SMSC's?)"
    reason = str(exc.reason or exc)
    if "CERTIFICATE_REQUIRED" in reason.upper() or "HANDSHAKE_FAILURE" in reason.upper():
        return f"TLS: handshake refused by the SMSC: {reason} (does it want a client certificate: tls_cert?)"
    return f"TLS: {reason}"
