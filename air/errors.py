"""The one exception type that reaches users: a problem named in one line."""


class AirError(Exception):
    """Bad input or a broken bundle; the command-line tools print it without a traceback."""
