"""The one exception type for bad input: the command line prints its message as one line."""


class BlocksftError(ValueError):
    """A user-facing error: bad input, a missing file, an unsafe overwrite. Says what and how to fix."""
