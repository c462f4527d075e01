"""What a flag document may not be, checked while it is parsed: YAML with YAML 1.2
booleans whose aliases are counted before anything is built (alias bombs and aliases that
refer to themselves are refused), nesting past :data:`MAX_DEPTH`, mappings whose keys mix
types. Each refusal is a :class:`DocumentProblem`, which the parser turns into a
:class:`~flagwire.FlagsetError` naming the file."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .pacing import PIECE, paced

__all__ = ["MAX_ALIAS_NODES", "MAX_DEPTH", "DocumentProblem", "Yaml12Loader", "check_tree"]

MAX_DEPTH = 100
"""The deepest nesting of objects and arrays a flag document may have."""
MAX_ALIAS_NODES = 100_000
"""How many nodes YAML aliases may add once expanded (a 600-byte alias bomb is 10^8)."""

_NODES = PIECE * 10  # containers checked between two calls of pace()


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: ``on``/``off``/``yes``/``no`` stay strings.

    flagd (Go, YAML 1.2) reads ``variants: {on: true, off: false}`` with string keys.
    Aliases are counted before anything is built: a document whose aliases expand past
    :data:`MAX_ALIAS_NODES` nodes, or refer to themselves, is refused.
    """

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        memo: dict[int, int] = {}
        expanded = _expanded_size(node, memo, set())
        if expanded > len(memo) + MAX_ALIAS_NODES:
            raise DocumentProblem(
                f"YAML aliases expand to {expanded} nodes from {len(memo)} (at most "
                f"{MAX_ALIAS_NODES} more are allowed): an alias bomb, not a flag file"
            )
        return self.construct_document(node)


class DocumentProblem(Exception):
    """A document refused before it is validated (its message names the problem)."""


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    key = id(node)
    known = memo.get(key)
    if known is not None:
        return known
    if key in active:
        raise DocumentProblem("a YAML alias refers to the node that contains it")
    if len(active) > MAX_DEPTH:
        raise DocumentProblem(f"the document is nested deeper than {MAX_DEPTH} levels")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    size = 1 + sum(_expanded_size(child, memo, active) for child in children)
    active.discard(key)
    memo[key] = size
    return size


def check_tree(raw: Any, *, keys: bool = True) -> None:
    """Refuse what no flag file has and later steps cannot take: nesting deeper than
    :data:`MAX_DEPTH`, mappings whose keys mix types (they cannot be ordered; ``keys``
    False skips that check, for parsers whose keys are always strings)."""
    # A fast pass over the containers alone; the problem, if there is one, is then found
    # again with its JSON path (building a path for every node would cost more than the
    # parse itself).
    level: list[Any] = [raw]
    depth = 0
    while level:
        below: list[Any] = []
        for node in paced(level, _NODES):
            children: Any
            if type(node) is dict:
                if keys and _mixed_keys(node):
                    _locate(raw)
                children = node.values()
            elif type(node) is list:
                children = node
            else:
                continue
            if children and depth >= MAX_DEPTH:
                _locate(raw)
            below.extend([c for c in children if type(c) is dict or type(c) is list])
        level = below
        depth += 1


def _mixed_keys(node: dict[Any, Any]) -> bool:
    return not all(type(key) is str for key in node) and len({type(key) for key in node}) > 1


def _locate(raw: Any) -> None:
    stack: list[tuple[Any, str, int]] = [(raw, "$", 0)]
    while stack:
        node, pointer, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DocumentProblem(
                f"the document is nested deeper than {MAX_DEPTH} levels (at {pointer})"
            )
        if isinstance(node, dict):
            kinds = {type(key) for key in node}
            if len(kinds) > 1:
                odd = next(key for key in node if not isinstance(key, str))
                raise DocumentProblem(
                    f"a mapping at {pointer} mixes key types ({odd!r} among strings): keys "
                    "must be strings (quote them in YAML)"
                )
            stack.extend((value, f"{pointer}.{key}", depth + 1) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, f"{pointer}[{i}]", depth + 1) for i, value in enumerate(node))


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
