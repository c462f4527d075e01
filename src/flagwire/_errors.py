"""flagwire's exceptions.

The hierarchy::

    FlagwireError
    ├── FlagsetError (ValueError)   a flag-definition document is invalid
    ├── SourceError                 a source cannot produce a flag set
    ├── ConflictError               a publish lost a compare-and-set race (nothing written)
    ├── PrometheusError             a Prometheus query failed (``flagwire report``)
    └── ConfigError (ValueError)    flagwire itself is misconfigured

Evaluation never raises: problems during evaluation become an error code on the
:class:`~flagwire.Assignment` instead.
"""

from __future__ import annotations


class FlagwireError(Exception):
    """Base class of every exception flagwire raises."""


class FlagsetError(FlagwireError, ValueError):
    """A flag-definition document is invalid.

    Attributes:
        message: What is wrong, and where possible how to fix it.
        path: The file (or source name) the document came from, if known.
        flag_key: The flag the problem belongs to, if any.
        pointer: The JSON path of the offending value inside the document, e.g.
            ``flags.checkout-v2.defaultVariant``.
        line: The line in the file, when it could be found.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        flag_key: str | None = None,
        pointer: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.flag_key = flag_key
        self.pointer = pointer
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "<flags>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        parts = [where]
        if self.flag_key is not None:
            parts.append(f'flag "{self.flag_key}"')
        text = ": ".join(parts) + f": {self.message}"
        if self.pointer:
            text += f" (at {self.pointer})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, path={self.path!r}, "
            f"flag_key={self.flag_key!r}, pointer={self.pointer!r}, line={self.line!r})"
        )


class SourceError(FlagwireError):
    """A source cannot load or refresh its flag set."""


class ConfigError(FlagwireError, ValueError):
    """flagwire is configured wrongly (bad option, missing extra, ...)."""


class ConflictError(FlagwireError):
    """Someone else published between this publisher's read and its write.

    Attributes:
        key: The Redis key.
        expected: The revision this publisher read (and diffed against).
        actual: The revision in the store now.
    """

    def __init__(self, key: str, expected: int, actual: int) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"{self.key}: revision {self.actual} was published (or the key written) after "
            f"this publisher read revision {self.expected}; nothing was written: run it again "
            "to review the change against what is in force now"
        )


class PrometheusError(FlagwireError):
    """A Prometheus query failed: unreachable, refused, or answered with something unusable.

    Attributes:
        url: The URL that was asked (with its query string).
        message: What went wrong.
    """

    def __init__(self, message: str, *, url: str) -> None:
        self.message = message
        self.url = url
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.url}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(message={self.message!r}, url={self.url!r})"


def missing_extra(exc: ImportError, module: str, what: str, extra: str) -> ImportError:
    """The error to raise when an optional dependency of ``module`` failed to import.

    Only a missing top-level package gets the install hint (an import that failed for
    another reason, such as a circular import or a broken install, is returned as it is,
    so its own message is not hidden behind a wrong one)::

        except ImportError as exc:
            raise missing_extra(exc, "flagwire.otel", "OpenTelemetry", "otel") from exc
    """
    if not isinstance(exc, ModuleNotFoundError) or exc.name is None or "flagwire" in exc.name:
        return exc
    return ImportError(
        f"{module} needs {what} ({exc.name} is not installed): in a flagwire checkout, "
        f'pip install -e ".[{extra}]"'
    )
