"""Extractors: build the evaluation context from the request an app already has.

An extractor is a callable that takes the framework's request — a Starlette/FastAPI
``Request``, a Flask/Werkzeug ``Request``, or a raw WSGI environ — and returns a mapping
of context attributes (or ``None``). Combine them with :func:`compose`::

    from flagwire import context

    extract = context.compose(
        context.user({"plan": "plan", "tenant": "org_id"}),   # targetingKey = user.id
        context.headers({"x-tenant": "tenant", "x-client-version": "appVersion"}),
        context.client(),                                     # ip, userAgent
    )

Later extractors win on conflicts; one that raises is logged and skipped, and the request
goes on with the context the others built. A plain callable ``request -> mapping`` is
always accepted wherever an extractor is.

This module imports no web framework: it reads requests by duck typing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "Extractor",
    "client",
    "compose",
    "cookies",
    "headers",
    "query",
    "static",
    "user",
]

logger = logging.getLogger("flagwire")

Extractor = Callable[[Any], "Mapping[str, Any] | None"]
"""``request -> context attributes`` (``None`` for nothing)."""


# -- reading requests of any kind ---------------------------------------------------------
#
# A request is one of: an ASGI scope (dict with "type"), a WSGI environ (dict), a
# Starlette Request (has .scope), a Werkzeug/Flask Request (has .environ). ASGI scopes are
# read raw: the middleware hands built-in extractors the scope, so no Request is built.


def _asgi_scope(request: Any) -> dict[str, Any] | None:
    if type(request) is dict:
        return request if "type" in request else None
    scope = getattr(request, "scope", None)
    return scope if type(scope) is dict else None


def _environ(request: Any) -> dict[str, Any] | None:
    if type(request) is dict and "type" not in request:
        return request
    return None


def _scope_header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def header(request: Any, name: str) -> str | None:
    """A request header (case-insensitive), or ``None``."""
    scope = _asgi_scope(request)
    if scope is not None:
        return _scope_header(scope, name.lower().encode("latin-1"))
    environ = _environ(request)
    if environ is not None:
        return environ.get(_environ_key(name))
    found = getattr(request, "headers", None)
    return None if found is None else found.get(name)


def _parse_cookie_header(raw: str | None) -> dict[str, str]:
    jar: dict[str, str] = {}
    if not raw:
        return jar
    for chunk in raw.split(";"):
        name, sep, value = chunk.partition("=")
        name = name.strip()
        if sep and name and name not in jar:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            jar[name] = value
    return jar


def request_cookies(request: Any) -> Mapping[str, str]:
    """The request's cookies (malformed pairs are skipped)."""
    scope = _asgi_scope(request)
    if scope is not None:
        return _parse_cookie_header(_scope_header(scope, b"cookie"))
    environ = _environ(request)
    if environ is not None:
        return _parse_cookie_header(environ.get("HTTP_COOKIE"))
    jar = getattr(request, "cookies", None)
    if jar is None:
        jar = getattr(request, "COOKIES", None)  # Django
    return jar if jar is not None else {}


def _first_values(query_string: str) -> dict[str, str]:
    parsed = parse_qs(query_string, keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def _query(request: Any) -> Mapping[str, Any]:
    scope = _asgi_scope(request)
    if scope is not None:
        return _first_values(bytes(scope.get("query_string", b"")).decode("latin-1"))
    environ = _environ(request)
    if environ is not None:
        return _first_values(environ.get("QUERY_STRING", ""))
    params = getattr(request, "args", None)  # Werkzeug
    if params is None:
        params = getattr(request, "GET", None)  # Django
    return params if params is not None else {}


def client_address(request: Any) -> str | None:
    """The client's address as the server saw it (behind a proxy, see ProxyHeaders)."""
    scope = _asgi_scope(request)
    if scope is not None:
        peer = scope.get("client")
        return str(peer[0]) if peer else None
    environ = _environ(request)
    if environ is not None:
        return environ.get("REMOTE_ADDR")
    meta = getattr(request, "META", None)  # Django
    if isinstance(meta, dict):
        return meta.get("REMOTE_ADDR")
    return getattr(request, "remote_addr", None)  # Werkzeug


def _authenticated(candidate: Any) -> bool:
    if candidate is None:
        return False
    flag = getattr(candidate, "is_authenticated", True)
    return bool(flag() if callable(flag) else flag)


def find_user(request: Any) -> Any:
    """The authenticated user object the app already attached to the request, if any.

    Looks at, in order: Starlette's ``scope["user"]`` (AuthenticationMiddleware),
    ``request.state.user``; the WSGI environ's ``flagwire.user``; then where framework
    adapters registered with :func:`add_user_lookup` (with :mod:`flagwire.flask`:
    Flask-Login's ``current_user``, then Flask's ``g.user``).
    """
    scope = _asgi_scope(request)
    if scope is not None:  # Starlette / FastAPI
        candidate = scope.get("user")
        if _authenticated(candidate):
            return candidate
        state = scope.get("state")
        candidate = state.get("user") if isinstance(state, dict) else None
        return candidate if _authenticated(candidate) else None
    environ = _environ(request)
    if environ is not None:
        candidate = environ.get("flagwire.user")
        return candidate if _authenticated(candidate) else None
    for lookup in _user_lookups:  # a framework adapter's (Flask-Login, Django, ...)
        candidate = lookup(request)
        if _authenticated(candidate):
            return candidate
    return None


_user_lookups: tuple[Callable[[Any], Any], ...] = ()


def add_user_lookup(lookup: Callable[[Any], Any]) -> None:
    """Another place :func:`find_user` looks: ``lookup(request)`` gives the request's user
    or ``None``. Framework adapters register theirs when imported (``flagwire.flask``
    looks at Flask-Login's ``current_user`` and ``g.user``)."""
    global _user_lookups
    if lookup not in _user_lookups:
        _user_lookups = (*_user_lookups, lookup)


def _attribute(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


# -- extractors ------------------------------------------------------------------------------


def headers(mapping: Mapping[str, str]) -> Extractor:
    """Context attributes from request headers: ``{"x-user-id": "targetingKey", ...}``.

    Only trust headers your edge sets: a client can send any header it likes.
    """
    pairs = tuple(mapping.items())
    wanted = {name.lower().encode("latin-1"): attribute for name, attribute in pairs}
    environ_keys = tuple((_environ_key(name), attribute) for name, attribute in pairs)

    def extract(request: Any) -> Mapping[str, Any]:
        found: dict[str, Any] = {}
        if type(request) is dict and "type" not in request:  # a WSGI environ
            for environ_key, attribute in environ_keys:
                text = request.get(environ_key)
                if text is not None:
                    found[attribute] = text
            return found
        scope = request if type(request) is dict else _asgi_scope(request)
        if scope is not None:  # one pass over the raw headers (lowercase, per ASGI)
            for key, value in scope.get("headers", ()):
                wanted_as = wanted.get(key)
                if wanted_as is not None and wanted_as not in found:
                    found[wanted_as] = value.decode("latin-1")
            return found
        for name, attribute in pairs:
            value = header(request, name)
            if value is not None:
                found[attribute] = value
        return found

    return _raw_ok(extract)


def cookies(mapping: Mapping[str, str]) -> Extractor:
    """Context attributes from cookies: ``{"session_plan": "plan"}``."""
    pairs = tuple(mapping.items())

    def extract(request: Any) -> Mapping[str, Any]:
        jar = request_cookies(request)
        return {attribute: jar[name] for name, attribute in pairs if name in jar}

    return _raw_ok(extract)


def query(mapping: Mapping[str, str]) -> Extractor:
    """Context attributes from query parameters: ``{"lang": "language"}``."""
    pairs = tuple(mapping.items())

    def extract(request: Any) -> Mapping[str, Any]:
        params = _query(request)
        return {attribute: params[name] for name, attribute in pairs if name in params}

    return _raw_ok(extract)


def user(
    attributes: Mapping[str, str] | None = None,
    *,
    key: str = "id",
    find: Callable[[Any], Any] = find_user,
) -> Extractor:
    """Context from the authenticated user the app already has (see :func:`find_user`).

    Args:
        attributes: Context attribute -> user attribute (or dict key), e.g.
            ``{"plan": "plan", "email": "email"}``.
        key: The user attribute that becomes ``targetingKey`` (as a string).
        find: How to find the user object for a request.
    """
    pairs = tuple((attributes or {}).items())

    def extract(request: Any) -> Mapping[str, Any] | None:
        found = find(request)
        if found is None:
            return None
        context: dict[str, Any] = {}
        identity = _attribute(found, key)
        if identity is not None and identity != "":
            context["targetingKey"] = str(identity)
        for attribute, name in pairs:
            value = _attribute(found, name)
            if value is not None:
                context[attribute] = value
        return context

    return _raw_ok(extract, environ=False) if find is find_user else extract


def client(ip: str | None = "ip", user_agent: str | None = "userAgent") -> Extractor:
    """The client's address and user agent, under the given attribute names."""

    def extract(request: Any) -> Mapping[str, Any]:
        context: dict[str, Any] = {}
        if ip is not None:
            address = client_address(request)
            if address:
                context[ip] = address
        if user_agent is not None:
            agent = header(request, "user-agent")
            if agent:
                context[user_agent] = agent
        return context

    return _raw_ok(extract)


def static(values: Mapping[str, Any]) -> Extractor:
    """The same attributes for every request (service name, region, ...)."""
    frozen = dict(values)
    return _raw_ok(lambda request: dict(frozen))


def _name(extractor: Any) -> str:
    return getattr(extractor, "__qualname__", None) or repr(extractor)


def compose(*extractors: Extractor) -> Extractor:
    """One extractor from several: results merged in order, later ones win.

    An extractor that raises or returns something other than a mapping is logged and
    skipped; the others still contribute.
    """
    chain = tuple(extractors)

    def extract(request: Any) -> Mapping[str, Any]:
        context: dict[str, Any] = {}
        for extractor in chain:
            try:
                found = extractor(request)
            except Exception:  # one broken extractor must not stop the rest
                logger.exception("flagwire: context extractor %s failed", _name(extractor))
                continue
            if type(found) is dict or isinstance(found, Mapping):
                context.update(found)
            elif found is not None:
                logger.error(
                    "flagwire: context extractor %s returned %s, not a mapping",
                    _name(extractor),
                    type(found).__name__,
                )
        return context

    if all(reads_raw(e) for e in chain):
        return _raw_ok(extract, environ=all(reads_environ(e) for e in chain))
    return extract


def _raw_ok(extractor: Extractor, *, environ: bool = True) -> Extractor:
    extractor.__flagwire_raw__ = True  # type: ignore[attr-defined]
    extractor.__flagwire_environ__ = environ  # type: ignore[attr-defined]
    return extractor


def reads_environ(extractor: Any) -> bool:
    """Whether an extractor needs nothing but the WSGI environ (flagwire's own, except
    :func:`user`, which asks the framework for the logged-in user), so a Flask app can
    hand it the environ instead of ``flask.request``."""
    return getattr(extractor, "__flagwire_environ__", False) is True


def reads_raw(extractor: Any) -> bool:
    """Whether an extractor reads raw ASGI scopes (flagwire's own do), so the middleware
    can skip building a Starlette ``Request`` for it."""
    return getattr(extractor, "__flagwire_raw__", False) is True
