"""Run under horovodrun: every rank contributes rank+1; the allreduced sum must be size*(size+1)/2."""

import json
import sys

import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum, name="rank_sum")
print(json.dumps({"rank": hvd.rank(), "size": hvd.size(), "sum": total.item()}), flush=True)
sys.exit(0)
