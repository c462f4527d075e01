"""The on-disk copy of the last good flag document, for starts while the source is down.

A remote source (HTTP, Redis) writes every good document it receives to ``path``
(atomically: a temporary file then :func:`os.replace`), with where it came from, its
validators and when it was fetched in ``<path>.meta.json``. At start-up, if the source
cannot be reached, the copy is served instead of the code defaults.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["CachedDocument", "DocumentCache", "write_atomically"]

logger = logging.getLogger("flagwire")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True, slots=True)
class CachedDocument:
    """A document read back from the cache.

    Attributes:
        text: The document (UTF-8 decoded).
        format: ``"json"``, ``"yaml"`` or ``None`` (guess).
        fetched_at: When the source delivered it (not when this process started).
        validators: The source's validators (ETag, Last-Modified, a version, ...) saved
            with it, only if they belong to this very body.
    """

    text: str
    format: str | None
    fetched_at: datetime
    validators: dict[str, str]


class DocumentCache:
    """The cache file of one source.

    Args:
        path: The file holding the document (``<path>.meta.json`` holds the rest).
        origin: The source's display name (a URL without credentials): a cache written
            for another origin is ignored.
    """

    def __init__(self, path: str | os.PathLike[str], origin: str) -> None:
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")
        self.origin = origin

    def write(
        self,
        body: bytes,
        *,
        format: str | None,
        fetched_at: datetime,
        validators: dict[str, str | None] | None = None,
    ) -> None:
        """Keep ``body`` as the last good document; a write error is logged, not raised."""
        meta = {
            "url": self.origin,
            **(validators or {}),
            "format": format,
            "fetched_at": fetched_at.isoformat(),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        try:
            write_atomically(self.path, body)
            write_atomically(self.meta_path, json.dumps(meta, indent=2).encode())
        except OSError as exc:
            logger.warning("flagwire: cannot write the flag cache %s: %s", self.path, exc)

    def read(self, validator_names: tuple[str, ...] = ()) -> CachedDocument | str:
        """The cached document, or why there is none usable (a problem to report)."""
        try:
            body = self.path.read_bytes()
        except FileNotFoundError:
            return f"{self.path} does not exist"
        except OSError as exc:
            return f"cannot read {self.path}: {exc}"
        meta: dict[str, Any] = {}
        try:
            loaded = json.loads(self.meta_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                meta = loaded
        except (OSError, ValueError, RecursionError):
            logger.warning("flagwire: %s is missing or unreadable; ignoring it", self.meta_path)
        if meta.get("url") not in (None, self.origin):
            problem = f"{self.path} holds flags of {meta.get('url')}, not {self.origin}"
            logger.warning("flagwire: ignoring the flag cache: %s", problem)
            return problem
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self.invalid(exc)
        validators: dict[str, str] = {}
        if meta.get("sha256") == hashlib.sha256(body).hexdigest():
            validators = {
                name: meta[name] for name in validator_names if isinstance(meta.get(name), str)
            }
        fetched_at: datetime | None = None
        if isinstance(meta.get("fetched_at"), str):
            with contextlib.suppress(ValueError):
                fetched_at = datetime.fromisoformat(meta["fetched_at"])
        if fetched_at is None:
            fetched_at = datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc)
        fmt = meta.get("format")
        return CachedDocument(
            text, fmt if fmt in ("json", "yaml") else None, fetched_at, validators
        )

    def invalid(self, exc: Exception) -> str:
        """Report a cached document that does not parse or validate; returns the problem."""
        problem = f"{self.path} is invalid: {exc}"
        logger.warning("flagwire: ignoring the flag cache: %s", problem)
        return problem
