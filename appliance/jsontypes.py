"""Checks that a value read from JSON has the type a dataclass field declares.

Used by the worker protocol (appliance.engine.protocol) and the registry's entries
(appliance.model_entry), so both read their JSON by the same rules: a bool is not a
number, a list stands for a list or a tuple, an object for a dict or a Mapping.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Callable
from typing import Any


def checker(hint: Any) -> Callable[[Any], bool]:
    """A test that a JSON value has the declared type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return lambda _value: True
    if origin in (types.UnionType, typing.Union):
        parts = [checker(arg) for arg in args]
        return lambda value: any(part(value) for part in parts)
    if hint is type(None):
        return lambda value: value is None
    if origin in (list, tuple):
        item = checker(args[0])
        return lambda value: type(value) is list and all(map(item, value))
    if origin in (dict, collections.abc.Mapping):
        item = checker(args[1])
        return lambda value: type(value) is dict and all(map(item, value.values()))
    if hint is float:
        return lambda value: type(value) in (int, float)
    return lambda value: type(value) is hint  # str, int, bool: exact, as JSON gives them


def describe(hint: Any) -> str:
    """A type as written in the dataclass: int, str | None, dict[str, Any]."""
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")
