"""spark-submit entry point for `cvr evaluate` (runs on the driver)."""

import sys

from cvr.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
