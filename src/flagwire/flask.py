"""The Flask extension: request-scoped flags for a Flask app.

::

    from flask import Flask
    from flagwire import FileSource
    from flagwire.flask import Flagwire, flags

    app = Flask(__name__)
    Flagwire(app, source=FileSource("flags.yaml"))

    @app.get("/checkout")
    def checkout():
        return {"new": flags.boolean("new-checkout", False)}

With the application-factory pattern, create ``fw = Flagwire()`` at import time and call
``fw.init_app(app, source=...)`` in the factory. Without ``source``, the extension reads
``app.config["FLAGWIRE_FLAGS_FILE"]`` and watches that file.

In a request, the flags are :func:`flagwire.current_flags`, ``g.flagwire`` and the
``flags`` proxy of this module, wherever Flask's request context is (``stream_with_context``
bodies included). Extractors receive ``flask.request``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from time import perf_counter
from typing import Any

from ._engine.flagset import FlagSet
from ._errors import ConfigError, missing_extra
from ._integration import DEFAULT_COOKIE, ONE_YEAR, Binding, BoundRequestFlags, ContextSpec
from ._propagation.policy import Propagation
from ._request.flags import RequestFlags
from ._request.scope import _current, add_resolver, current_flags
from ._sources.base import Source
from ._sources.file import FileSource
from ._telemetry import Telemetry
from .context import add_user_lookup, reads_environ
from .wsgi import ENVIRON_KEY, STARTED_KEY, StartResponse, WSGIApp

try:
    from flask import (
        Flask,
        Response,
        after_this_request,
        current_app,
        g,
        has_app_context,
        has_request_context,
        request,
    )
    from werkzeug.local import LocalProxy
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.flask", "Flask", "flask") from exc

__all__ = ["Flagwire", "flags"]

EXTENSION_KEY = "flagwire"
logger = logging.getLogger("flagwire")
_UNSET: Any = object()


class Flagwire:
    """Flask extension.

    Args:
        app: The app, or ``None`` to call :meth:`init_app` later.
        source: A :class:`~flagwire.Source` or :class:`~flagwire.FlagSet`; default: a
            :class:`~flagwire.FileSource` on ``app.config["FLAGWIRE_FLAGS_FILE"]``.
        context: An extractor (``flask.Request -> mapping``) or a sequence of them;
            default: the logged-in user (Flask-Login ``current_user`` or ``g.user``).
        anonymous_cookie: Cookie name for anonymous visitors' stable ``targetingKey``,
            or ``None`` for no cookie.
        cookie_max_age: The anonymous cookie's lifetime in seconds.
        propagation: How assignments travel in ``baggage`` to and from other services
            (:class:`~flagwire.Propagation`); default: from ``$FLAGWIRE_PROPAGATION_KEYS``;
            ``False`` to neither honour nor send any.
        telemetry: Where each finished request's decided flags are recorded (route label:
            the URL rule, ``/users/<int:id>``).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        source: Source | FlagSet | None = None,
        context: ContextSpec = None,
        anonymous_cookie: str | None = DEFAULT_COOKIE,
        cookie_max_age: int = ONE_YEAR,
        propagation: Propagation | bool | None = None,
        telemetry: Sequence[Telemetry] = (),
    ) -> None:
        self._defaults: dict[str, Any] = {
            "source": source,
            "context": context,
            "anonymous_cookie": anonymous_cookie,
            "cookie_max_age": cookie_max_age,
            "propagation": propagation,
            "telemetry": telemetry,
        }
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        *,
        source: Source | FlagSet | None = None,
        context: ContextSpec = None,
        anonymous_cookie: str | None = _UNSET,
        cookie_max_age: int = _UNSET,
        propagation: Propagation | bool | None = None,
        telemetry: Sequence[Telemetry] | None = None,
    ) -> None:
        """Register on an app; arguments given here override the constructor's.

        Raises:
            ConfigError: The app already has flagwire, or no source is configured.
        """
        if EXTENSION_KEY in app.extensions:
            raise ConfigError(
                "flagwire is already registered on this app; call init_app once per app"
            )
        app.config.setdefault("FLAGWIRE_FLAGS_FILE", None)
        app.config.setdefault("FLAGWIRE_STRICT", False)
        chosen = source if source is not None else self._defaults["source"]
        if chosen is None:
            path = app.config["FLAGWIRE_FLAGS_FILE"]
            if not path:
                raise ConfigError(
                    "flagwire needs a flag source: Flagwire(app, source=FileSource(...)) "
                    "or app.config['FLAGWIRE_FLAGS_FILE'] = 'flags.yaml'"
                )
            chosen = FileSource(path, strict=bool(app.config["FLAGWIRE_STRICT"]))
        binding = Binding(
            chosen,
            context if context is not None else self._defaults["context"],
            anonymous_cookie=(
                self._defaults["anonymous_cookie"]
                if anonymous_cookie is _UNSET
                else anonymous_cookie
            ),
            cookie_max_age=(
                self._defaults["cookie_max_age"] if cookie_max_age is _UNSET else cookie_max_age
            ),
            propagation=propagation if propagation is not None else self._defaults["propagation"],
            telemetry=telemetry if telemetry is not None else self._defaults["telemetry"],
        )
        # flagwire's own extractors read the WSGI environ directly; others get flask.request.
        binding.adapt = None if reads_environ(binding.extract) else _flask_request
        app.extensions[EXTENSION_KEY] = binding
        # Around the WSGI call, not in request hooks: two function calls, not three hooks.
        app.wsgi_app = _FlaskWsgi(app.wsgi_app, binding)  # type: ignore[method-assign]
        app.app_ctx_globals_class = _with_flagwire(app.app_ctx_globals_class)
        if binding.telemetry:
            # In after_request the response status, the URL rule and the server span of
            # OpenTelemetry's Flask instrumentation are all still there.
            app.after_request(_record)

    @staticmethod
    def binding(app: Flask) -> Binding:
        """The app's binding (source, context, cookie).

        Raises:
            ConfigError: flagwire was never registered on this app.
        """
        try:
            binding: Binding = app.extensions[EXTENSION_KEY]
        except KeyError:
            raise ConfigError(
                "flagwire is not registered on this app; did you forget "
                "Flagwire(app) or flagwire.init_app(app)?"
            ) from None
        return binding


class _FlaskWsgi:
    __slots__ = ("binding", "wsgi_app")

    def __init__(self, wsgi_app: WSGIApp, binding: Binding) -> None:
        self.wsgi_app = wsgi_app
        self.binding = binding

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Flask's own request ends when wsgi_app returns (it pops its context), except for
        # stream_with_context bodies, which find the flags through the request context.
        binding = self.binding
        flags = _FlaskRequestFlags(binding, environ)
        environ[ENVIRON_KEY] = flags
        if binding.telemetry:
            environ[STARTED_KEY] = perf_counter()
        token = _current.set(flags)
        try:
            return self.wsgi_app(environ, start_response)
        finally:
            _current.reset(token)


class _FlaskRequestFlags(BoundRequestFlags):
    """A Flask request's flags: a new anonymous id goes out on Flask's response."""

    __slots__ = ()

    def _new_anonymous_id(self, new_id: str) -> None:
        # Set on the response object, as Flask apps set cookies: no start_response
        # wrapper on every request. The context is built when the first flag is read;
        # if that is after the response was made (another extension's after_request, a
        # streamed body), the visitor gets an id on a later request instead.
        if not has_request_context():
            logger.debug("flagwire: no Flask request to send the anonymous id cookie on")
            return
        secure = request.environ.get("wsgi.url_scheme") == "https"
        cookie = self._binding.set_cookie_value(new_id, secure=secure)

        def add_cookie(response: Response) -> Response:
            response.headers.add("Set-Cookie", cookie)
            return response

        after_this_request(add_cookie)


def _record(response: Response) -> Response:
    binding: Binding = current_app.extensions[EXTENSION_KEY]
    environ = request.environ
    flags = environ.get(ENVIRON_KEY)
    started = environ.get(STARTED_KEY)
    if isinstance(flags, RequestFlags) and started is not None:
        rule = request.url_rule
        binding.record(
            flags,
            request.method,
            rule.rule if rule is not None else "",
            response.status_code,
            perf_counter() - started,
        )
    return response


def _flask_request(_: Any) -> Any:
    return request._get_current_object()  # type: ignore[attr-defined]


def _with_flagwire(base: type[Any]) -> type[Any]:
    """The app's ``g`` class, with ``g.flagwire`` giving the current request's flags."""
    if getattr(base, "_flagwire_attribute", False):
        return base

    class FlagwireGlobals(base):  # type: ignore[misc]
        _flagwire_attribute = True

        @property
        def flagwire(self) -> RequestFlags:
            return current_flags()

    FlagwireGlobals.__name__ = FlagwireGlobals.__qualname__ = base.__name__
    return FlagwireGlobals


def _flags_of_flask_request() -> RequestFlags | None:
    # A stream_with_context body runs after flagwire's context variable was reset, with
    # Flask's request context pushed again: the request's flags are in its environ.
    if has_request_context():
        found = request.environ.get(ENVIRON_KEY)
        if isinstance(found, RequestFlags):
            return found
    return None


add_resolver(_flags_of_flask_request)

flags: RequestFlags = LocalProxy(current_flags)  # type: ignore[assignment]
"""The current request's flags (a proxy to :func:`flagwire.current_flags`)."""


def _flask_user(request: Any) -> Any:
    if not hasattr(request, "environ"):  # not a Werkzeug request
        return None
    try:
        from flask_login import current_user

        candidate = current_user._get_current_object()
        if getattr(candidate, "is_authenticated", False):
            return candidate
    except Exception:  # flask-login absent, or no login manager on this app
        pass
    try:
        if has_app_context():
            return g.get("user")
    except RuntimeError:  # outside an application context
        pass
    return None


add_user_lookup(_flask_user)
