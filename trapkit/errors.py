"""The one exception type for mistakes a user can fix.

Raised anywhere in trapkit with a message that says what to do; caught once in
`trapkit.app.cli.main`, printed on one line to stderr, exit code 1.
"""


class TrapkitError(Exception):
    """A user error: bad input, a missing file, an unknown name. Never a bug."""
