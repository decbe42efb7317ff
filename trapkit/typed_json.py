"""Values read from JSON files checked against a dataclass field's type.

JSON written by hand (a `--config` file) or damaged (a model's `spec.json`)
can hold "5" where 5 belongs; the dataclasses would take it and fail much
later, deep inside torch. `checked` turns such a value into a one-line error.
"""

from __future__ import annotations

import json
import types
import typing

from trapkit.errors import TrapkitError


def checked(value, hint, where: str, advice: str):
    """`value` as type `hint` (int, float, bool, str, dict, tuple[X, ...], tuple[X, X, X], or optional)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    base = next(t for t in options if t is not type(None))
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        length = None if args[-1] is Ellipsis else len(args)
        if isinstance(value, (list, tuple)) and length in (None, len(value)):
            return tuple(checked(v, args[0], where, advice) for v in value)
    elif base is float:
        if _is_number(value):
            return float(value)
    elif base is int:
        if _is_number(value) and isinstance(value, int):
            return value
    elif isinstance(value, base):  # bool (never 0 or 1), str, dict
        return value
    raise TrapkitError(f"{where} must be {_described(base)}, not {json.dumps(value)}; {advice}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# type -> (one, many)
_NAMES = {int: ("a whole number", "whole numbers"), float: ("a number", "numbers"),
          bool: ("true or false", "true or false values"), str: ("text", "texts"), dict: ("an object", "objects")}


def _described(hint) -> str:
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        count = "" if args[-1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{_NAMES[args[0]][1]}"
    return _NAMES[hint][0]
