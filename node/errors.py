"""Errors that end a CLI command with a one-line message and an exit code."""


class UserError(Exception):
    """Bad input or a state the admin must fix; the message says what to do."""

    exit_code = 1


class UsageError(UserError):
    """The command line itself is malformed."""

    exit_code = 2
