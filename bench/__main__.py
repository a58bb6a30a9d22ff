"""`python -m bench`: run the benchmark suite (see bench/suite.py)."""

import sys

from bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
