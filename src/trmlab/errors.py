"""The one exception type for bad user input: the CLI prints it on one line and exits with code 2."""


class TrmError(Exception):
    """A user-facing error (bad config, malformed input, missing file). Never a bug."""
