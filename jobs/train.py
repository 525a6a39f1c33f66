"""spark-submit entry point: train on the Spark executors with horovod.spark.run.

spark-submit --py-files dist/cvr.zip jobs/train.py --np 2 --model esmm --root /shared/cvr
"""

import sys

from cvr.cli.main import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["train", "--launcher", "spark", *args]))
