"""spark-submit entry point for `cvr build-samples` (arguments as for the command)."""

import sys

from cvr.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["build-samples", *sys.argv[1:]]))
