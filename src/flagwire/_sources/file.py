"""A flag file on local disk, reloaded when it changes: :class:`FileSource`."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from flagwire._errors import FlagsetError, SourceError

from .base import load_text
from .polling import PollingSource

logger = logging.getLogger("flagwire")


__all__ = ["FileSource"]


class FileSource(PollingSource):
    """A flag-definition file, reloaded when it changes.

    The file is checked every ``poll_interval`` seconds by a daemon thread (by size,
    modification time and inode, so editors that replace the file are seen too). A
    valid new version replaces the flag set in one atomic swap; an invalid one is
    logged and reported in :attr:`status` while the last good flag set stays in force.

    A version is taken only if it was read whole: a read that fails (permission denied,
    out of file descriptors) is retried on every check until it succeeds, and a file that
    changes while it is read is read again. A new file (an atomic rename, a ConfigMap's
    symlink swap) and a JSON file (half of one never parses) are read at once; a YAML file
    rewritten in place, whose first half may parse, is taken only once it has not changed
    for ``settle`` seconds (its modification time is that old, or its signature stayed the
    same across that long), so a half-written YAML document never replaces the flag set
    in force.

    Args:
        path: The JSON or YAML file.
        strict: Raise at start-up if the file is missing or invalid. Otherwise start
            with an empty flag set, log a loud warning, and load the file as soon as
            it becomes valid.
        poll_interval: Seconds between checks; ``0`` disables watching (call
            :meth:`refresh` yourself).
        fractional: Force the fractional algorithm (``"v2"``/``"v3"``).
        settle: Seconds a YAML file rewritten in place must stay unchanged before it is
            read (``0``: read every change at once).

    Raises:
        FlagsetError: In strict mode, when the file is missing or invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        strict: bool = False,
        poll_interval: float = 0.5,
        fractional: str | None = None,
        settle: float = 1.0,
    ) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self._fractional = fractional
        self.settle = float(settle)
        self._signature: tuple[int, int, int] | None = None
        """The signature of the version read whole last (accepted or rejected)."""
        self._pending: tuple[tuple[int, int, int], float] | None = None
        try:
            for _ in range(3):  # a file being written as we start: read it again
                if self._load():
                    break
        except (FlagsetError, SourceError) as exc:
            if strict:
                raise
            self._reject(exc)
            logger.warning(
                "flagwire: starting with NO FLAGS: %s. Every flag gives its code default "
                "until %s is valid (use strict=True to fail instead).",
                exc,
                self.path,
            )
        self._poll_interval = poll_interval
        if poll_interval > 0:
            self._start_polling()

    def _delay(self) -> float:
        return self._poll_interval

    def _thread_name(self) -> str:
        return f"flagwire-watch:{self.path}"

    def _poll(self) -> object:
        return self.refresh()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self, signature: tuple[int, int, int] | None = None) -> bool:
        """Read the version with ``signature`` (default: the file's now) and accept it.

        The signature is remembered only once that version was read whole, so a failed
        read, or a file that changed while it was read (then False is returned), is tried
        again at the next check.
        """
        if signature is None:
            signature = self._stat()
        if signature is None:
            self._signature = None
            resolved = os.path.abspath(self.path)
            raise FlagsetError(f"file not found (looked for {resolved})", path=str(self.path))
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read the file (will retry): {exc}") from exc
        if self._stat() != signature:
            return False
        self._signature = signature
        self._pending = None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FlagsetError(f"cannot read file: {exc}", path=str(self.path)) from exc
        self._accept(load_text(text, source=str(self.path), fractional=self._fractional))
        return True

    def _settled(self, signature: tuple[int, int, int]) -> bool:
        """Whether a changed file may be read now (see the class documentation)."""
        previous = self._signature
        if self.settle <= 0 or previous is None or previous[2] != signature[2]:
            return True  # a new file, put in place whole
        if self.path.suffix.lower() == ".json":
            return True
        if time.time() - signature[0] / 1e9 >= self.settle:
            return True
        now = time.monotonic()
        if self._pending is None or self._pending[0] != signature:
            self._pending = (signature, now)
            return False
        return now - self._pending[1] >= self.settle

    def refresh(self) -> bool:
        """Reload now if the file changed. Returns True if a new flag set is in force."""
        with self._refresh_lock:
            signature = self._stat()
            if signature == self._signature:
                return False
            if signature is not None and not self._settled(signature):
                return False
            before = self.flagset
            try:
                self._load(signature)
            except (FlagsetError, SourceError) as exc:
                self._reject(exc)
                return False
            except Exception as exc:  # never let a bad file kill the watcher
                self._reject(SourceError(f"{self.path}: {type(exc).__name__}: {exc}"))
                return False
            return self.flagset.digest != before.digest

    def __repr__(self) -> str:
        return f"<FileSource {self.path} {self._status.version} ok={self._status.ok}>"
