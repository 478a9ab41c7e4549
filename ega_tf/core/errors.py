"""The errors a user can fix, told apart from bugs.

A ``UserError`` means the input is wrong (a flag, a file, a missing dataset)
and its message says what to do. The command-line entry points print such an
error as one line and exit with status 2; every other exception is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """Bad input; the message names the problem and the fix."""


class ConfigError(UserError):
    """One or more configuration fields are invalid (all are listed)."""


class ConversionError(UserError):
    """A checkpoint does not fit the architecture it is converted into."""


class DatasetNotFoundError(UserError):
    """A dataset is neither prepared nor obtainable offline."""


class RunStopped(Exception):
    """A run that stopped for a reason its message states (e.g. it
    diverged); the command line prints it as one line, exit status 3."""


def first_line(error, limit=300):
    """The first line of an exception's message (Keras's terminal colour
    codes removed), at most ``limit`` characters; its type's name when the
    message is empty. For one-line messages that quote a library's error."""
    text = str(error)
    for code in ("\x1b[1m", "\x1b[0m"):
        text = text.replace(code, "")
    text = text.strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
