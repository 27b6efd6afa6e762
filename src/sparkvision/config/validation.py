"""Configs validate themselves from their own type hints when they are made.

Every config dataclass derives from :class:`Validated`: a field typed with a
``Literal`` (alone or in a union, such as ``Literal[1, 3] | None``) accepts exactly
those values, read from the type with :func:`typing.get_type_hints` and
:func:`typing.get_args`. So the allowed names are written once, in the type, and a bad
one fails where the config is made (on the driver, before any Spark job or training
rank), with a message naming the field, the value and what is allowed; the way
scikit-learn validates ``_parameter_constraints`` before ``fit`` does any work.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, Literal


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


@cache
def _constraints(cls: type) -> dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Field -> (allowed literal values, the union's other members) for every Literal field of ``cls``."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        members = _members(hints[f.name])
        literals = tuple(v for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m))
        if literals:
            found[f.name] = (literals, tuple(m for m in members if typing.get_origin(m) is not Literal))
    return found


def literal_values(cls: type, name: str) -> tuple[Any, ...]:
    """The values the ``Literal`` type of field ``name`` of ``cls`` allows."""
    return _constraints(cls)[name][0]


def _is_literal(value: Any, allowed: tuple[Any, ...]) -> bool:
    # True == 1 in Python, but True is not the channel count 1.
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def _is_instance(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    return isinstance(value, origin if origin is not None else hint)


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "None"
    origin = typing.get_origin(hint) or hint
    return f"a {getattr(origin, '__name__', str(origin))}"


def _alternatives(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def check_literals(config: Any) -> None:
    """Raise ValueError for the first field of ``config`` whose value its Literal type does not allow."""
    for name, (allowed, others) in _constraints(type(config)).items():
        value = getattr(config, name)
        if _is_literal(value, allowed) or any(_is_instance(value, hint) for hint in others):
            continue
        words = [repr(a) for a in allowed] + [_describe(hint) for hint in others]
        raise ValueError(f"{type(config).__name__}.{name} must be {_alternatives(words)}, got {value!r}")


class Validated:
    """Base of the config dataclasses: :func:`check_literals` after ``__init__``.

    A subclass with its own ``__post_init__`` calls ``super().__post_init__()`` first.
    """

    def __post_init__(self) -> None:
        check_literals(self)
