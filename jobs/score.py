"""spark-submit entry point for `cvr score` (arguments as for the command)."""

import sys

from cvr.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
