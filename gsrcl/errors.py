"""The one exception type for user mistakes: the runner prints its message, never a traceback."""


class UserError(Exception):
    """A problem the user can fix (config, paths, data); the message says what and how."""


class Stopped(BaseException):
    """The runner was told to stop (SIGTERM, as a scheduler or `kill` sends): like Ctrl-C, it
    unwinds every `finally` (workers stopped, lock released) and keeps what is finished."""
