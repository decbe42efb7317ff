"""What every command-line adapter does with flags: drop the ones not given, check the ones that need another.

Adapters stay thin (pipx's habit): flags default to None ("not given"), so the
settings dataclasses stay the only source of defaults, and one helper words
every "this flag needs that one" error the same way.
"""

from __future__ import annotations

from trapkit.errors import TrapkitError


def given(**values) -> dict:
    """The keyword arguments whose flag was given (not None): the dataclass defaults fill the rest."""
    return {k: v for k, v in values.items() if v is not None}


def only_with(needed: str, present: bool, used: dict[str, bool]) -> None:
    """Refuse the flags in `used` that were given (True) when `needed` (a flag, with its metavar) was not."""
    flags = [name for name, on in used.items() if on]
    if flags and not present:
        verb = "applies" if len(flags) == 1 else "apply"
        raise TrapkitError(f"{', '.join(flags)} only {verb} with {needed}; add {needed}")


def not_with(other: str, present: bool, used: dict[str, bool], instead: str) -> None:
    """Refuse the flags in `used` that were given (True) together with `other`, saying what to do `instead`."""
    flags = [name for name, on in used.items() if on]
    if flags and present:
        verb = "does" if len(flags) == 1 else "do"
        raise TrapkitError(f"{', '.join(flags)} {verb} not apply with {other}; {instead}")


def default_of(cls, name: str):
    """A dataclass field's default, for help texts that state it without restating it."""
    return cls.__dataclass_fields__[name].default
