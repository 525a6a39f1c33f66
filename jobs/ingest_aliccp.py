"""spark-submit entry point for `cvr ingest-aliccp` (arguments as for the command)."""

import sys

from cvr.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["ingest-aliccp", *sys.argv[1:]]))
