"""The one exception type for bad user input: the CLI prints it on one line and exits with code 2."""


class TrmError(Exception):
    """A user-facing error (bad config, malformed input, missing file). Never a bug."""


def first_line(e: Exception) -> str:
    """A library exception as one line for a TrmError message: its first line, or its type when it says nothing."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run (after saving its checkpoint); the CLI exits 128 + the signal's number, as a
    shell reports a process the signal ended (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)
