"""A flag file on local disk, reloaded when it changes: :class:`FileSource`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flagwire._engine.flagset import FlagSet
from flagwire._errors import FlagsetError, SourceError

from .polling import PollingSource

logger = logging.getLogger("flagwire")


__all__ = ["FileSource"]


class FileSource(PollingSource):
    """A flag-definition file, reloaded when it changes.

    The file is checked every ``poll_interval`` seconds by a daemon thread (by size,
    modification time and inode, so editors that replace the file are seen too). A
    valid new version replaces the flag set in one atomic swap; an invalid one is
    logged and reported in :attr:`status` while the last good flag set stays in force.

    Args:
        path: The JSON or YAML file.
        strict: Raise at start-up if the file is missing or invalid. Otherwise start
            with an empty flag set, log a loud warning, and load the file as soon as
            it becomes valid.
        poll_interval: Seconds between checks; ``0`` disables watching (call
            :meth:`refresh` yourself).
        fractional: Force the fractional algorithm (``"v2"``/``"v3"``).

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
    ) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self._fractional = fractional
        self._signature: tuple[int, int, int] | None = None
        try:
            self._load()
        except FlagsetError as exc:
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

    def _load(self) -> None:
        signature = self._stat()
        self._signature = signature
        if signature is None:
            raise FlagsetError("file not found", path=str(self.path))
        self._accept(FlagSet.from_path(self.path, fractional=self._fractional))

    def refresh(self) -> bool:
        """Reload now if the file changed. Returns True if a new flag set is in force."""
        with self._refresh_lock:
            signature = self._stat()
            if signature == self._signature:
                return False
            before = self.flagset
            try:
                self._load()
            except (FlagsetError, SourceError) as exc:
                self._reject(exc)
                return False
            except Exception as exc:  # never let a bad file kill the watcher
                self._reject(SourceError(f"{self.path}: {type(exc).__name__}: {exc}"))
                return False
            return self.flagset.digest != before.digest

    def __repr__(self) -> str:
        return f"<FileSource {self.path} {self._status.version} ok={self._status.ok}>"
