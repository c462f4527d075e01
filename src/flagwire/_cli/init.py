"""``flagwire init``: a starter flag file that passes ``validate`` and
``audit --require owner,expires``."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

__all__ = ["DEFAULT_PATH", "starter", "write_starter"]

DEFAULT_PATH = "flags.yaml"
LIFETIME_DAYS = 90  # a release flag should be gone within a quarter

_STARTER = """\
# flagd flag definitions (https://flagd.dev/reference/flag-definitions/).
# Check with: flagwire validate {name} && flagwire audit {name} --require owner,expires
flags:
  new-checkout:
    state: ENABLED
    variants: {{"on": true, "off": false}}
    defaultVariant: "off"
    targeting:            # 10% of users (by targetingKey) get the new checkout
      fractional: [["on", 10], ["off", 90]]
    metadata: {{owner: team-checkout, expires: "{expires}", kind: release}}
"""


def starter(name: str = DEFAULT_PATH, today: date | None = None) -> str:
    """The starter document; its flag expires ``LIFETIME_DAYS`` from ``today``."""
    expires = (today or date.today()) + timedelta(days=LIFETIME_DAYS)
    return _STARTER.format(name=name, expires=expires.isoformat())


def write_starter(path: str, *, force: bool = False) -> str:
    """Write the starter file; returns what to tell the user. Never overwrites unless
    ``force``: a flag file in use is worth more than a starter."""
    target = Path(path)
    if target.is_dir():
        target = target / DEFAULT_PATH
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")
    target.write_text(starter(target.name), encoding="utf-8")
    return (
        f"wrote {target}: one release flag, new-checkout, on for 10% of users.\n"
        f"next: flagwire validate {target}; then point FileSource({str(target)!r}) at it"
    )
