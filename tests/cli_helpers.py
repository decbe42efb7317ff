"""Running trapkit's command line in a test and reading its one-line error."""

from __future__ import annotations

from trapkit.app.cli import main


def one_line_error(argv: list[str], capsys) -> str:
    """The error `trapkit ARGV` prints: exit code 1 and exactly one line on stderr, which is returned."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("trapkit: error: ") and "\n" not in err
    return err
