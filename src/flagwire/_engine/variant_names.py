"""Variant names written in targeting rules that are not variants of their flag.

flagd finds these only at run time (the users such a branch or bucket picks get
``ERROR``); :func:`unknown_variant_names` finds them when the flag set is loaded, so
``flagwire validate`` and ``flagwire audit`` report them with the JSON path and the
closest real variant.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator
from typing import Any

__all__ = ["unknown_variant_names"]


def _results(rule: Any, at: str) -> Iterator[tuple[str, Any]]:
    """The literal results a rule can give, each with its path."""
    if isinstance(rule, (str, bool)):
        yield at, rule
        return
    if not (isinstance(rule, dict) and len(rule) == 1):
        return
    op, args = next(iter(rule.items()))
    if not isinstance(args, list):
        return
    here = f"{at}.{op}"
    if op in ("if", "?:"):
        branches = list(range(1, len(args), 2))
        if len(args) % 2:
            branches.append(len(args) - 1)
        for i in branches:
            yield from _results(args[i], f"{here}[{i}]")
    elif op in ("and", "or"):
        for i, arg in enumerate(args):
            yield from _results(arg, f"{here}[{i}]")
    elif op == "fractional":
        start = 0 if args and isinstance(args[0], list) else 1
        for i in range(start, len(args)):
            bucket = args[i]
            if isinstance(bucket, list) and bucket:
                yield from _results(bucket[0], f"{here}[{i}][0]")


def unknown_variant_names(targeting: Any, variants: Collection[str], at: str) -> list[str]:
    """One message per literal variant name in ``targeting`` that ``variants`` lacks.

    Args:
        targeting: The flag's rule (``$ref`` already substituted).
        variants: The flag's variant names.
        at: The path of the rule (``flags.<key>.targeting``).
    """
    problems = []
    for path, value in _results(targeting, at):
        name = ("true" if value else "false") if isinstance(value, bool) else value
        if name in variants:
            continue
        close = difflib.get_close_matches(name, list(variants), n=1, cutoff=0.5)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        problems.append(
            f'{path} chooses "{name}", which is not a variant of this flag'
            f" [{', '.join(variants)}]{hint}; the users it picks would get ERROR"
        )
    return problems
