"""``python -m trmlab.compress`` (seed 001's phase-1 command line) is ``trm compress``: see trmlab/cli/compress.py."""

import sys

from trmlab.cli.compress import main

if __name__ == "__main__":
    sys.exit(main())
