"""Errors that end a CLI command with a one-line message and an exit code."""


class UserError(Exception):
    """Bad input or a state the admin must fix; the message says what to do."""

    exit_code = 1


class UsageError(UserError):
    """The command line itself is malformed."""

    exit_code = 2


def first_user_error(exc: BaseException) -> UserError | None:
    """The UserError that ended ``exc``, looking inside trio exception groups.

    A group counts only if everything in it is a UserError: anything else
    is a bug that must surface with its traceback.
    """
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(UserError)
        if match is not None and rest is None:
            leaf: BaseException = match
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, UserError) else None
    return None
