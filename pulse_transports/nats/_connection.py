"""Reaching NATS: connection options, credential redaction, connecting.

This module owns :class:`NatsOptions` -- server URLs, token, user/password,
creds file and TLS, resolved from given values and ``$PULSE_NATS_*`` and
passed through to nats-py -- :func:`connect`, and :func:`explain`, which maps
nats-py's failures to :class:`~pulse_transports.nats.NatsError` with a clear
message. URLs are logged only redacted (:func:`redact`), secrets never. Must
not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Mapping
from typing import Any, Final

import attrs
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from pulse_core._log import get_logger
from pulse_core.policy import CONNECT_BACKOFF
from pulse_transports.nats._errors import NatsAuthError, NatsError, NatsUnavailable

log = get_logger("pulse.nats")


# -- names and defaults (specs/nats.md says why each default is what it is) ------

#: Where nats-py finds a server when nothing is configured.
DEFAULT_URL: Final = "nats://127.0.0.1:4222"

ENV_URL: Final = "PULSE_NATS_URL"
ENV_TOKEN: Final = "PULSE_NATS_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_USER: Final = "PULSE_NATS_USER"
ENV_PASSWORD: Final = "PULSE_NATS_PASSWORD"  # noqa: S105 - a variable name
ENV_CREDS: Final = "PULSE_NATS_CREDS"

#: Longest pause between two attempts while failing (seconds): the cap of
#: :data:`pulse_core.policy.CONNECT_BACKOFF`, which every NATS client uses.
RETRY_MAX: Final = CONNECT_BACKOFF.cap

_USERINFO_RE: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s,]*@")


def redact(text: str) -> str:
    """Hide the userinfo (``user:password@``, ``token@``) of every URL in *text*."""
    return _USERINFO_RE.sub(r"\g<scheme>***@", text)


def redact_url(url: str) -> str:
    """A server URL (or comma-separated list) fit for logs: userinfo hidden."""
    return redact(url)


#: The connection options of every ``nats`` table (sink, source, hub), all strings.
CONNECTION_OPTIONS: Final[Mapping[str, type]] = dict.fromkeys(
    ("url", "token", "user", "password", "creds", "tls_ca", "tls_cert", "tls_key", "tls_hostname"),
    str,
)
_ENV_OF: Final = {
    "url": ENV_URL,
    "token": ENV_TOKEN,
    "user": ENV_USER,
    "password": ENV_PASSWORD,
    "creds": ENV_CREDS,
}


@attrs.frozen
class NatsOptions:
    """How to reach and authenticate to NATS; passed through to nats-py.

    Attributes:
        url: server URL, or several separated by commas (``nats://``,
            ``tls://``; userinfo in a URL works but is better given below).
        token: an authentication token.
        user, password: user/password authentication.
        creds: path of a ``.creds`` file (JWT + NKey seed).
        tls_ca: a CA bundle to verify the server with (enables TLS).
        tls_cert, tls_key: a client certificate and key (mutual TLS).
        tls_hostname: the name to verify the server's certificate against.
        connect_timeout: seconds one connection attempt may take.
        name: the connection name shown in the server's monitoring.
    """

    url: str = DEFAULT_URL
    token: str | None = attrs.field(default=None, repr=False)
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None
    connect_timeout: float = 2.0
    name: str = "pulse"

    @classmethod
    def resolve(
        cls,
        given: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> NatsOptions:
        """Options from given values (a ``[tool.pulse.nats]`` table, arguments).

        A given value wins; ``$PULSE_NATS_URL``, ``$PULSE_NATS_TOKEN``,
        ``$PULSE_NATS_USER``, ``$PULSE_NATS_PASSWORD`` and
        ``$PULSE_NATS_CREDS`` fill what is left open (so secrets can stay out
        of files); then the defaults. Keys other than the connection options
        are ignored.
        """
        environ = os.environ if env is None else env
        values: dict[str, Any] = {}
        source = {**(given or {}), **extra}
        for key in CONNECTION_OPTIONS:
            value = source.get(key)
            if value in (None, "") and key in _ENV_OF:
                value = environ.get(_ENV_OF[key]) or None
            if value not in (None, ""):
                values[key] = str(value)
        for key in ("connect_timeout", "name"):
            if source.get(key) is not None:
                values[key] = source[key]
        return cls(**values)

    @property
    def servers(self) -> list[str]:
        """The server URLs."""
        return [part.strip() for part in self.url.split(",") if part.strip()]

    @property
    def shown(self) -> str:
        """The URL(s) as logs and messages show them (userinfo hidden)."""
        return redact_url(self.url)

    def redact(self, text: str) -> str:
        """*text* with URL userinfo and this configuration's secrets hidden."""
        out = redact(text)
        for secret in (self.token, self.password):
            if secret:
                out = out.replace(secret, "***")
        return out

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context when TLS is asked for (a CA, a client cert, ``tls://``)."""
        wants = self.tls_ca or self.tls_cert or any(s.startswith("tls://") for s in self.servers)
        if not wants:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``nats.aio.client.Client.connect``."""
        kwargs: dict[str, Any] = {
            "servers": self.servers,
            "connect_timeout": self.connect_timeout,
            "name": self.name,
        }
        if self.token:
            kwargs["token"] = self.token
        if self.user:
            kwargs["user"] = self.user
        if self.password:
            kwargs["password"] = self.password
        if self.creds:
            kwargs["user_credentials"] = self.creds
        context = self.ssl_context()
        if context is not None:
            kwargs["tls"] = context
            if self.tls_hostname:
                kwargs["tls_hostname"] = self.tls_hostname
        return kwargs


def explain(exc: BaseException, options: NatsOptions) -> NatsError:
    """Turn a nats-py failure into a :class:`NatsError` with a clear, redacted message."""
    if isinstance(exc, NatsError):
        return exc
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError):
        return NatsError(
            f"the NATS server at {options.shown} does not answer JetStream requests: "
            "start it with JetStream enabled (nats-server -js)"
        )
    text = options.redact(str(exc).strip() or type(exc).__name__)
    lowered = text.lower()
    if (
        isinstance(exc, nats.errors.AuthorizationError)
        or "authorization" in lowered
        or "authentication" in lowered
        or "user credentials" in lowered
    ):
        return NatsAuthError(
            f"the NATS server at {options.shown} refused the credentials ({text}); "
            "check token, user/password or creds ([tool.pulse.nats], $PULSE_NATS_TOKEN)"
        )
    return NatsUnavailable(f"cannot reach NATS at {options.shown}: {type(exc).__name__}: {text}")


async def connect(
    options: NatsOptions,
    *,
    reconnect: bool = False,
    reconnect_wait: float = 0.5,
    on_disconnect: Any = None,
    on_reconnect: Any = None,
) -> NatsClient:
    """Connect to NATS with *options*.

    Args:
        options: where and how.
        reconnect: keep reconnecting for ever after a lost connection
            (long-lived readers and sinks); False for one-shot commands.
        reconnect_wait: seconds between two reconnection attempts.
        on_disconnect, on_reconnect: coroutine functions nats-py calls.

    Raises:
        NatsAuthError: the server refused the credentials.
        NatsUnavailable: no server answered.
    """
    client = NatsClient()
    seen: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        # nats-py's default logs a traceback per error; ours is one quiet,
        # redacted line (callers see failures through their own calls).
        if len(seen) < 8:
            seen.append(exc)
        log.debug("nats client error", error=options.redact(f"{type(exc).__name__}: {exc}"))

    kwargs = options.connect_kwargs()
    # nats-py annotates the wait as int; it is used as seconds and takes a float.
    extra: dict[str, Any] = {"reconnect_time_wait": 0.05}
    if on_disconnect is not None:
        extra["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        extra["reconnected_cb"] = on_reconnect
    try:
        # The first attempt fails fast with the real reason (refused, wrong
        # token); with reconnection on, nats-py would retry it silently for ever.
        # (1 is nats-py's least: each server is tried twice, 50 ms apart.)
        await client.connect(
            **kwargs,
            error_cb=on_error,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            **extra,
        )
    except Exception as exc:  # noqa: BLE001 - nats-py raises many kinds; mapped to ours
        with contextlib.suppress(Exception):
            await client.close()
        if isinstance(exc, nats.errors.NoServersError) and seen:
            exc = seen[-1]  # why the servers failed, not only that they did
        raise explain(exc, options) from None
    # nats-py reads these at each reconnection: from now on, for ever (or never).
    client.options["allow_reconnect"] = reconnect
    client.options["max_reconnect_attempts"] = -1 if reconnect else 0
    client.options["reconnect_time_wait"] = reconnect_wait
    return client
