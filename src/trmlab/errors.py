"""The one exception type for bad user input: the CLI prints it on one line and exits with code 2."""


class TrmError(Exception):
    """A user-facing error (bad config, malformed input, missing file). Never a bug."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run (after saving its checkpoint); the CLI exits 128 + the signal's number, as a
    shell reports a process the signal ended (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)
