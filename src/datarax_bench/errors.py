"""Errors that reach the user as one line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config, CLI argument, catalog or result file.

    The message is one line naming the bad value and what was expected; the CLI prints it
    and exits with code 2 without writing anything.
    """

    exit_code = 2
