"""``python -m trmlab.cli <verb> ...`` is ``trm <verb> ...`` (as ``python -m trmlab``)."""

import sys

from trmlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
