"""spark-submit entry point for `cvr hash-features` (arguments as for the command)."""

import sys

from cvr.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["hash-features", *sys.argv[1:]]))
