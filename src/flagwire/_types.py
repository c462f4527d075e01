"""Type aliases shared across flagwire."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

JsonValue: TypeAlias = Any
"""Any value JSON (or YAML) can hold: None, bool, int, float, str, list, dict."""

FlagValue: TypeAlias = Any
"""A variant's value: bool, str, int, float, or a JSON object/array."""

Context: TypeAlias = Mapping[str, Any]
"""An evaluation context: attributes plus an optional ``targetingKey``."""

MetadataValue: TypeAlias = "bool | int | float | str"
Metadata: TypeAlias = Mapping[str, MetadataValue]
