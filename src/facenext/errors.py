"""The one exception type that the command line turns into a one-line message and exit status 2."""


class UserError(Exception):
    """A problem the user can fix: bad input, a missing file, a wrong option. The message says what to do."""
