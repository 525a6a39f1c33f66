"""Entry point of one training rank under horovodrun: `python -m cvr.train.worker JOB.json`."""

from __future__ import annotations

import json
import sys

from cvr.train.trainer import train_worker


def main(argv: list[str]) -> int:
    with open(argv[0]) as handle:
        job = json.load(handle)
    train_worker(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
