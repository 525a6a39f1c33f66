"""spark-submit entry point for `cvr simulate` (same options)."""

import sys

from cvr.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))
