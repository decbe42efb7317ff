"""JSON files read safely, versioned files refused when newer, values checked against field types.

JSON written by hand (a `--config` file) or damaged (a model's `spec.json`)
can hold "5" where 5 belongs; the dataclasses would take it and fail much
later, deep inside torch. `checked` turns such a value into a one-line error.
`read_json` turns every way a file can fail to parse (missing, not UTF-8,
invalid, nested 200,000 deep, a 5,000-digit number) into one line, and
`read_versioned` adds the one rule for every versioned trapkit file: an
object whose `format_version` is not newer than this trapkit understands.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

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


def read_json(path: str | Path, what: str, advice: str):
    """The parsed JSON in `path`; a one-line `TrapkitError` naming `what` the file is, ending with `advice`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrapkitError(f"{what} {path} does not exist; {advice}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrapkitError(f"cannot read {what} {path} ({e.__class__.__name__}); {advice}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TrapkitError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                           f"{advice}") from None
    except RecursionError:
        raise TrapkitError(f"{what} {path} is nested too deeply to be a trapkit or MegaDetector file; {advice}") from None
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise TrapkitError(f"{what} {path} holds a value that cannot be read ({e}); {advice}") from None


def refuse_newer(version, current: int, what: str) -> None:
    """The one refusal of a file written by a newer trapkit (its fields may mean things this one cannot check)."""
    if isinstance(version, int) and not isinstance(version, bool) and version > current:
        raise TrapkitError(f"{what} has format {version}, newer than this trapkit understands ({current}); "
                           "upgrade trapkit")


def read_versioned(path: str | Path, current: int, what: str, advice: str) -> dict:
    """A versioned trapkit JSON file: an object, `format_version` not newer than `current` (absent: 1)."""
    d = read_json(path, what, advice)
    if not isinstance(d, dict):
        raise TrapkitError(f"{what} {path} is not a JSON object; {advice}")
    version = d.get("format_version", 1)
    refuse_newer(version, current, f"{what} {path}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TrapkitError(f"{what} {path} has format_version {json.dumps(version)}, not a version; {advice}")
    return d
