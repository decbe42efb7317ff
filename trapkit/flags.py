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


def add_ray_args(parser, work: str) -> None:
    """`--ray ADDRESS` and `--ray-actors N`, for every command that can run `work` on a Ray cluster."""
    parser.add_argument("--ray", metavar="ADDRESS",
                        help=f"{work} on a Ray cluster: host:port, ray://host:port, auto, or local (a cluster inside "
                        "this process); images must be on a path every node sees. Needs trapkit[ray] "
                        "(docs/scale-out.md)")
    parser.add_argument("--ray-actors", type=int, default=None, metavar="N",
                        help="with --ray: most model actors (default: one per GPU, or one per CPU without GPUs)")


def ray_settings(args):
    """`trapkit.cluster.ClusterSettings` from `add_ray_args`' flags, checked (address, Ray installed) before any
    work; None without --ray."""
    only_with("--ray ADDRESS", args.ray is not None, {"--ray-actors": args.ray_actors is not None})
    if args.ray is None:
        return None
    from trapkit.cluster import ClusterSettings, require_ray

    settings = ClusterSettings(args.ray, actors=args.ray_actors)
    require_ray(settings.address)
    return settings
