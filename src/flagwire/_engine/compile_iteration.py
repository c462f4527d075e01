"""JsonLogic's iteration operations (map, filter, reduce, all, some, none), compiled."""

from __future__ import annotations

from typing import Any

from .jsonlogic_ops import Compiled, truthy

__all__ = ["compile_iteration"]


def compile_iteration(
    op: str, count: int, items: Compiled, sub: Compiled, init: Any = None
) -> Compiled:
    """``op`` over the list ``items`` gives, with ``sub`` evaluated per item.

    ``count`` is the number of arguments written: with too few, flagd's evaluator gives a
    constant (``[]``, ``None``, ``False`` or ``True``, by operation). ``init`` is
    ``reduce``'s initial accumulator, as written (not evaluated, as in flagd).
    """
    if op == "map":
        if count == 0:
            return lambda d: []

        def map_(d: Any) -> Any:
            xs = items(d)
            return [sub(x) for x in xs] if isinstance(xs, list) else []

        return map_
    if op == "filter":
        if count < 2:
            return lambda d: []

        def filter_(d: Any) -> Any:
            xs = items(d)
            return [x for x in xs if truthy(sub(x))] if isinstance(xs, list) else []

        return filter_
    if op == "reduce":
        if count == 0:
            return lambda d: None

        def reduce_(d: Any) -> Any:
            xs = items(d)
            if not isinstance(xs, list):
                return init
            scope: dict[str, Any] = {"accumulator": init}
            for x in xs:
                scope["current"] = x
                scope["accumulator"] = sub(scope)
            return scope["accumulator"]

        return reduce_
    if op == "all":
        if count < 2:
            return lambda d: False

        def all_(d: Any) -> bool:
            xs = items(d)
            if not isinstance(xs, list) or not xs:
                return False
            return all(truthy(sub(x)) for x in xs)

        return all_
    if op == "some":
        if count < 2:
            return lambda d: False

        def some_(d: Any) -> bool:
            xs = items(d)
            return isinstance(xs, list) and any(truthy(sub(x)) for x in xs)

        return some_
    if count < 2:  # none
        return lambda d: True

    def none_(d: Any) -> bool:
        xs = items(d)
        return not isinstance(xs, list) or not any(truthy(sub(x)) for x in xs)

    return none_
