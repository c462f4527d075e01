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
``flags`` proxy of this module. Extractors receive ``flask.request``.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from ._errors import ConfigError
from ._flagset import FlagSet
from ._integration import DEFAULT_COOKIE, ONE_YEAR, Binding, BoundRequestFlags, ContextSpec
from ._request import RequestFlags, _current, add_resolver, current_flags
from ._sources import FileSource, Source

try:
    from flask import Flask, Response, g, has_request_context, request
    from werkzeug.local import LocalProxy
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("flagwire.flask needs Flask: pip install 'flagwire[flask]'") from exc

__all__ = ["Flagwire", "flags"]

EXTENSION_KEY = "flagwire"
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
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        source: Source | FlagSet | None = None,
        context: ContextSpec = None,
        anonymous_cookie: str | None = DEFAULT_COOKIE,
        cookie_max_age: int = ONE_YEAR,
    ) -> None:
        self._defaults: dict[str, Any] = {
            "source": source,
            "context": context,
            "anonymous_cookie": anonymous_cookie,
            "cookie_max_age": cookie_max_age,
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
        )
        binding.adapt = _adapt
        app.extensions[EXTENSION_KEY] = binding
        app.before_request(_before_request)
        app.after_request(_after_request)
        app.teardown_request(_teardown_request)

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


def _current_request() -> Any:
    return request._get_current_object()  # type: ignore[attr-defined]


def _before_request() -> None:
    from flask import current_app

    binding: Binding = current_app.extensions[EXTENSION_KEY]
    request_flags = BoundRequestFlags(binding, None)
    g.flagwire = request_flags
    g._flagwire_token = _current.set(request_flags)


def _adapt(_: Any) -> Any:
    return _current_request()


def _after_request(response: Response) -> Response:
    request_flags = g.get("flagwire")
    if isinstance(request_flags, BoundRequestFlags) and request_flags.new_anonymous_id:
        new_id = request_flags.new_anonymous_id
        request_flags.new_anonymous_id = None
        binding = request_flags._binding
        response.headers.add(
            "Set-Cookie", binding.set_cookie_value(new_id, secure=request.is_secure)
        )
    return response


def _teardown_request(_: BaseException | None) -> None:
    token: Token[RequestFlags | None] | None = g.pop("_flagwire_token", None)
    if token is not None:
        try:
            _current.reset(token)
        except ValueError:  # torn down in another context (e.g. a copied one)
            _current.set(None)


def _flags_of_flask_request() -> RequestFlags | None:
    # After Flask's teardown (e.g. while a stream_with_context body is produced), the
    # request context is pushed again but flagwire's context variable is gone: find the
    # request's flags on g.
    if has_request_context():
        found = g.get("flagwire")
        if isinstance(found, RequestFlags):
            return found
    return None


add_resolver(_flags_of_flask_request)

flags: RequestFlags = LocalProxy(current_flags)  # type: ignore[assignment]
"""The current request's flags (a proxy to :func:`flagwire.current_flags`)."""
