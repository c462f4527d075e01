"""Parse and validate flagd flag-definition documents (JSON or YAML).

Structural problems (a missing ``state``, a ``defaultVariant`` that is not a variant,
bad metadata, unknown properties) reject the whole document with a
:class:`~flagwire.FlagsetError` naming the file, the flag, the JSON path and the fix.
Problems inside targeting rules (unknown operations, dangling ``$ref``) do not: as in
flagd, such a flag evaluates to ``PARSE_ERROR`` when the broken part is reached, and the
problem is listed in :attr:`FlagsetDocument.problems` (and by ``flagwire validate``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flagwire._errors import ConfigError, FlagsetError
from flagwire._types import JsonValue, MetadataValue

from .document_limits import MAX_DEPTH, DocumentProblem, Yaml12Loader, check_tree
from .pacing import loads_in_pieces, paced

__all__ = [
    "FlagDefinition",
    "FlagsetDocument",
    "RefSubstitution",
    "parse_document",
    "plain_copy",
    "read_document",
    "substitute_refs",
]

_FLAG_PROPERTIES = frozenset(
    {"state", "variants", "defaultVariant", "targeting", "metadata", "source", "selector"}
)
_STATES = ("ENABLED", "DISABLED")


@dataclass(frozen=True, slots=True)
class FlagDefinition:
    """One validated flag, as written in the document."""

    key: str
    state: str
    variants: Mapping[str, JsonValue]
    default_variant: str | None
    targeting: JsonValue
    metadata: Mapping[str, MetadataValue]

    @property
    def enabled(self) -> bool:
        """False when ``state`` is ``DISABLED``."""
        return self.state == "ENABLED"


@dataclass(frozen=True, slots=True)
class FlagsetDocument:
    """A validated flag-definition document."""

    flags: Mapping[str, FlagDefinition]
    metadata: Mapping[str, MetadataValue]
    evaluators: Mapping[str, JsonValue]
    source: str | None
    raw: Mapping[str, JsonValue]


def _line_of(text: str | None, flag_key: str | None, prop: str | None = None) -> int | None:
    """Best-effort line of a flag (and one of its properties) in the source text."""
    if not text or flag_key is None:
        return None
    match = re.search(rf"""(^|[\s{{,])["']?{re.escape(flag_key)}["']?\s*:""", text, re.M)
    if match is None:
        return None
    offset = match.start()
    if prop is not None:
        sub = re.compile(rf"""["']?{re.escape(prop)}["']?\s*:""").search(text, match.end())
        if sub is not None:
            offset = sub.start()
    return text.count("\n", 0, offset) + 1


class _Validator:
    def __init__(self, source: str | None, text: str | None) -> None:
        self.source = source
        self.text = text
        self._refs: tuple[Mapping[str, Any], RefSubstitution] | None = None

    def substitute(self, targeting: Any, evaluators: Mapping[str, Any]) -> Any:
        # One substitution per document: each evaluator is expanded once, not per flag.
        if self._refs is None or self._refs[0] is not evaluators:
            self._refs = (evaluators, RefSubstitution(evaluators))
        return self._refs[1](targeting)

    def fail(
        self, message: str, *, flag: str | None = None, pointer: str, prop: str | None = None
    ) -> FlagsetError:
        return FlagsetError(
            message,
            path=self.source,
            flag_key=flag,
            pointer=pointer,
            line=_line_of(self.text, flag, prop),
        )

    def metadata(self, value: Any, *, flag: str | None, pointer: str) -> dict[str, MetadataValue]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(
                f"metadata must be an object, not {_kind(value)}",
                flag=flag,
                pointer=pointer,
                prop="metadata",
            )
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise self.fail(
                    f"metadata keys must be non-empty strings, got {key!r}",
                    flag=flag,
                    pointer=pointer,
                    prop="metadata",
                )
            if isinstance(item, bool | int | float | str):
                continue
            raise self.fail(
                f'metadata "{key}" must be a string, number or boolean, not {_kind(item)}',
                flag=flag,
                pointer=f"{pointer}.{key}",
                prop=key,
            )
        return dict(value)

    def flag(self, key: Any, data: Any, evaluators: Mapping[str, Any]) -> FlagDefinition:
        pointer = f"flags.{key}"
        if not isinstance(key, str) or not key:
            raise self.fail(f"flag keys must be non-empty strings, got {key!r}", pointer="flags")
        if not isinstance(data, dict):
            raise self.fail(
                f"a flag must be an object, not {_kind(data)}", flag=key, pointer=pointer
            )
        unknown = (
            []
            if _FLAG_PROPERTIES.issuperset(data)
            else sorted(str(k) for k in data if k not in _FLAG_PROPERTIES)
        )
        if unknown:
            raise self.fail(
                f"unknown propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}"
                " (a flag has state, variants, defaultVariant, targeting, metadata;"
                " put anything else in metadata)",
                flag=key,
                pointer=f"{pointer}.{unknown[0]}",
                prop=unknown[0],
            )
        state = data.get("state")
        if state not in _STATES:
            what = "is missing" if state is None else f"is {json.dumps(state)}"
            raise self.fail(
                f"state {what}; it must be ENABLED or DISABLED",
                flag=key,
                pointer=f"{pointer}.state",
                prop=None if state is None else "state",
            )
        variants = data.get("variants")
        if not isinstance(variants, dict) or not variants:
            what = (
                "is missing"
                if variants is None
                else f"must be a non-empty object, not {_kind(variants)}"
            )
            raise self.fail(
                f"variants {what}",
                flag=key,
                pointer=f"{pointer}.variants",
                prop=None if variants is None else "variants",
            )
        for name in variants:
            if not isinstance(name, str):
                raise self.fail(
                    f"variant names must be strings, got {name!r} (quote it in YAML)",
                    flag=key,
                    pointer=f"{pointer}.variants",
                    prop="variants",
                )
        default = data.get("defaultVariant")
        if isinstance(default, bool):
            default = "true" if default else "false"
        if default == "":
            default = None
        if default is not None:
            if not isinstance(default, str):
                raise self.fail(
                    f"defaultVariant must be a variant name or null, not {_kind(default)}",
                    flag=key,
                    pointer=f"{pointer}.defaultVariant",
                    prop="defaultVariant",
                )
            if default not in variants:
                raise self.fail(
                    f'defaultVariant "{default}" is not one of variants [{", ".join(variants)}]',
                    flag=key,
                    pointer=f"{pointer}.defaultVariant",
                    prop="defaultVariant",
                )
        metadata = self.metadata(data.get("metadata"), flag=key, pointer=f"{pointer}.metadata")
        return FlagDefinition(
            key=key,
            state=state,
            variants=dict(variants),
            default_variant=default,
            targeting=self.substitute(data.get("targeting"), evaluators),
            metadata=metadata,
        )

    def flag_array(self, items: list[Any]) -> dict[Any, Any]:
        """``"flags": [{"key": ..., ...}]`` (flagd since PR #1797) as the keyed form."""
        flags: dict[Any, Any] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(
                    f"a flag must be an object, not {_kind(item)}", pointer=f"flags[{i}]"
                )
            key = item.get("key")
            if not isinstance(key, str) or not key:
                raise self.fail(
                    f"a flag in a flags array needs a non-empty string key, got {key!r}",
                    pointer=f"flags[{i}].key",
                )
            if key in flags:
                raise self.fail(
                    f'flag "{key}" is defined twice in the flags array',
                    flag=key,
                    pointer=f"flags[{i}].key",
                )
            flags[key] = {k: v for k, v in item.items() if k != "key"}
        return flags

    def document(self, raw: Any) -> FlagsetDocument:
        if not isinstance(raw, dict):
            raise self.fail(
                f"a flag-definition document must be an object, not {_kind(raw)}", pointer="$"
            )
        flags = raw.get("flags", {})
        if flags is None:
            flags = {}
        if isinstance(flags, list):
            flags = self.flag_array(flags)
        if not isinstance(flags, dict):
            raise self.fail(
                f"flags must be an object or an array, not {_kind(flags)}", pointer="flags"
            )
        evaluators = raw.get("$evaluators") or {}
        if not isinstance(evaluators, dict):
            raise self.fail(
                f"$evaluators must be an object, not {_kind(evaluators)}", pointer="$evaluators"
            )
        metadata = self.metadata(raw.get("metadata"), flag=None, pointer="metadata")
        definitions = {key: self.flag(key, data, evaluators) for key, data in paced(flags.items())}
        return FlagsetDocument(
            flags=definitions,
            metadata=metadata,
            evaluators=dict(evaluators),
            source=self.source,
            raw=raw,
        )


def plain_copy(value: Any) -> Any:
    """A deep copy made of dicts and lists, from any mappings and sequences."""
    if isinstance(value, Mapping):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_copy(v) for v in value]
    return value


class RefSubstitution:
    """Replaces ``{"$ref": "name"}`` with the evaluator, exactly as flagd does, in one walk.

    flagd substitutes one evaluator after another into the document's text, in the order of
    ``$evaluators``: an evaluator pasted at step *i* has its own ``$ref``s replaced only by
    the steps after *i*, so it may use evaluators defined *after* it but not before it; such
    a leftover ``$ref`` evaluates to ``PARSE_ERROR`` (and is listed in the flag set's
    problems). Walking once with "the first step still to come" gives the same result in
    time linear in the document (each evaluator expanded once), where step by step costs
    one walk of every flag per evaluator.
    """

    def __init__(self, evaluators: Mapping[str, Any]) -> None:
        self._order = {name: i for i, name in enumerate(evaluators)}
        self._rules = evaluators
        self._expanded: dict[str, Any] = {}

    def __call__(self, targeting: Any) -> Any:
        if not self._order or not _may_have_refs(targeting):
            return targeting
        return self._walk(targeting, 0)

    def _expansion(self, name: str) -> Any:
        expanded = self._expanded.get(name)
        if expanded is None and name not in self._expanded:
            # Pasted at its own step: only the later evaluators are substituted inside it (so
            # the recursion always moves forward: no cycle).
            expanded = self._expanded[name] = self._walk(self._rules[name], self._order[name] + 1)
        return expanded

    def _walk(self, node: Any, first: int) -> Any:
        if isinstance(node, dict):
            if len(node) == 1:
                name = node.get("$ref")
                if isinstance(name, str) and self._order.get(name, -1) >= first:
                    return plain_copy(self._expansion(name))  # each use its own copy
            return {k: self._walk(v, first) for k, v in node.items()}
        if isinstance(node, list):
            return [self._walk(item, first) for item in node]
        return node


def _may_have_refs(targeting: Any) -> bool:
    # Most rules have no $ref: one pass in C (repr) instead of a walk in Python. A string
    # that happens to contain '$ref' only costs the walk.
    return isinstance(targeting, (dict, list)) and "'$ref'" in repr(targeting)


def substitute_refs(targeting: Any, evaluators: Mapping[str, Any]) -> Any:
    """``targeting`` with its ``$ref``s substituted as flagd does (see :class:`RefSubstitution`)."""
    return RefSubstitution(evaluators)(targeting)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _looks_like_yaml(source: str | None, text: str) -> bool:
    if source is not None and source.lower().endswith((".yaml", ".yml")):
        return True
    if source is not None and source.lower().endswith(".json"):
        return False
    return not text.lstrip().startswith(("{", "["))


def parse_text(text: str, source: str | None = None, fmt: str | None = None) -> Any:
    """Parse JSON or YAML text (by ``fmt``, the file suffix, or the first character)."""
    if fmt is not None and fmt not in ("json", "yaml"):
        raise ConfigError(f'format must be "json" or "yaml", not {fmt!r}')
    use_yaml = fmt == "yaml" if fmt is not None else _looks_like_yaml(source, text)
    try:
        raw = yaml.load(text, Loader=Yaml12Loader) if use_yaml else loads_in_pieces(text)
        check_tree(raw, keys=use_yaml)  # JSON keys are strings
        return raw
    except DocumentProblem as exc:
        raise FlagsetError(str(exc), path=source) from None
    except RecursionError:
        raise FlagsetError(
            f"the document is nested deeper than {MAX_DEPTH} levels", path=source
        ) from None
    except json.JSONDecodeError as exc:
        raise FlagsetError(f"invalid JSON: {exc.msg}", path=source, line=exc.lineno) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise FlagsetError(f"invalid YAML: {problem}", path=source, line=line) from exc
    except ValueError as exc:  # a number past Python's 4300-digit limit, and the like
        kind = "YAML" if use_yaml else "JSON"
        problem = "a number has too many digits" if "digits" in str(exc) else str(exc)
        raise FlagsetError(f"invalid {kind}: {problem}", path=source) from None


def parse_document(
    raw: Any, *, source: str | None = None, text: str | None = None
) -> FlagsetDocument:
    """Validate a parsed document; raise :class:`FlagsetError` if it is not a flag set."""
    return _Validator(source, text).document(raw)


def read_document(path: str | Path) -> tuple[FlagsetDocument, str]:
    """Read, parse and validate a file; returns the document and the file's text."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FlagsetError("file not found", path=name) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise FlagsetError(f"cannot read file: {exc}", path=name) from exc
    raw = parse_text(text, name)
    return parse_document(raw, source=name, text=text), text
