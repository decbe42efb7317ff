"""CLI commands of this stage (registered by trapkit.cli)."""


def register(subparsers, common) -> None:
    pass
