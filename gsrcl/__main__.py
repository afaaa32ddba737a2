"""`python3 -m gsrcl ...`: the `gsrcl` command (see `gsrcl.cli`)."""

import sys

from gsrcl.cli import main

if __name__ == "__main__":
    sys.exit(main())
