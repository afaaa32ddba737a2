"""The one exception type for user mistakes: the runner prints its message, never a traceback."""


class UserError(Exception):
    """A problem the user can fix (config, paths, data); the message says what and how."""
