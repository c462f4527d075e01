"""``python -m flagwire`` runs the CLI."""

from __future__ import annotations

import sys

from ._cli.main import main

sys.exit(main())
