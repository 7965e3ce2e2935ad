"""`python -m pipeline.compare ...`: the same command as `python -m pipeline compare ...`."""

import sys

from pipeline.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
