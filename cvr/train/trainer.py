"""The training function every rank runs: the same code under one process, horovodrun and horovod.spark.run.

It takes a plain dict (a `TrainJob`, so it pickles across process boundaries) and returns the metrics.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from cvr.data.layout import FeatureLayout, as_tensors
from cvr.data.petastorm_reader import training_batches
from cvr.data.sharding import plan_shards
from cvr.metrics.selection import improvement, parse_selector
from cvr.train import checkpoint as ckpt
from cvr.train.distributed import Horovod
from cvr.train.evaluation import predict_files, score_columns
from cvr.train.optim import OptimizerSet

log = logging.getLogger("cvr.train")


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _build_model(job: dict, layout: FeatureLayout, device: torch.device):
    from cvr.models import build_model

    field_names = [c[2:] for c in layout.sparse_columns]
    model = build_model(job["model_cfg"], list(layout.buckets), len(layout.dense_columns), field_names=field_names)
    if job.get("warm_start"):
        weights = torch.load(Path(job["warm_start"]) / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(weights)
    return model.to(device)


class Progress:
    """Rank-0 progress line with throughput; quiet on other ranks. Time counts training steps only."""

    def __init__(self, enabled: bool, total_steps: int, batch_size: int, world: int, every: int = 50):
        self.enabled, self.total, self.every = enabled, total_steps, every
        self.samples_per_step = batch_size * world
        self.elapsed = 0.0
        self.mark: float | None = None
        self.steps = 0

    def resume(self) -> None:
        self.mark = time.perf_counter()

    def pause(self) -> None:
        if self.mark is not None:
            self.elapsed += time.perf_counter() - self.mark
            self.mark = None

    def update(self, step: int, epoch: int, loss: float) -> None:
        self.steps += 1
        if not self.enabled or (step % self.every and step != self.total):
            return
        pct = 100.0 * step / max(self.total, 1)
        log.info("epoch %d step %d/%d (%.0f%%) loss %.4f  %.0f samples/s", epoch, step, self.total, pct, loss,
                 self.samples_per_second)  # fmt: skip

    @property
    def samples_per_second(self) -> float:
        running = self.elapsed + (time.perf_counter() - self.mark if self.mark is not None else 0.0)
        return self.steps * self.samples_per_step / max(running, 1e-9)


_MASK64 = 2**64 - 1


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed mixed from (seed, rank, step) with splitmix64's finaliser, so nearby triples seed far apart."""
    mixed = 0x9E3779B97F4A7C15
    for value in (seed, rank, step):
        mixed = ((mixed ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & _MASK64
        mixed ^= mixed >> 31
    return mixed >> 1


def seed_step(seed: int, rank: int, step: int, device: torch.device) -> None:
    """Seed the random draws of one training step (augmentation masks, dropout) from (seed, rank, step).

    Every rank starts from the same seed, so that all build the same model; drawing the steps from it as well
    gave every rank the same masks at the same batch positions, where one process training on the whole global
    batch draws independent ones. Seeding per step also makes a resumed run draw what an uninterrupted one did.
    The generators are seeded directly: torch.manual_seed costs 0.1 ms, 1% of a CPU training step.
    """
    value = step_seed(seed, rank, step)
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        torch.cuda.manual_seed(value)  # the rank's device: Horovod.device() made it the current one


def _validate(model, job, layout, dist, device) -> dict:
    columns = predict_files(
        model, job["valid_files"], layout, dist, device, workers=job["config"]["train"]["reader_workers"]
    )
    return score_columns(columns, job.get("truth"), dist)


def train_worker(job: dict) -> dict:
    """Train on this rank's shard; returns {'metrics', 'history', ...} (identical on every rank)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tcfg = job["config"]["train"]
    dist = Horovod()
    device = dist.device()
    threads = dist.set_threads(tcfg["threads_per_rank"])
    if tcfg.get("bind_cores", True) and (cores := dist.bind_cores(threads)):
        log.info("rank %d: pinned to cores %s", dist.rank, cores)
    torch.manual_seed(tcfg["seed"])
    np.random.seed(tcfg["seed"])
    layout = FeatureLayout.from_spec(job["spec"])
    model = _build_model(job, layout, device)
    optimizers = OptimizerSet(model, tcfg, lr=tcfg["lr"] * dist.size, dist=dist)
    out_dir = Path(job["output_dir"])
    ckpt_dir = out_dir / "checkpoints"
    start = {"step": 0, "epoch": 0, "step_in_epoch": 0, "best": {}}
    if job.get("resume"):
        start = _resume(ckpt_dir, job["config_hash"], model, optimizers, dist)
    optimizers.broadcast(model)

    plan = plan_shards(job["train_files"], dist.size, tcfg["batch_size"])
    if plan.steps_per_epoch < 1:
        raise ValueError(
            f"the smallest shard has {min(plan.rows_per_shard)} rows, less than one batch of {tcfg['batch_size']}"
        )
    columns = layout.columns(with_labels=True)
    total = plan.steps_per_epoch * tcfg["epochs"]
    if dist.is_chief:
        log.info("training %s: %d ranks, %d threads/rank, device %s, %d rows, %d steps/epoch x %d epochs",
                 job["model_cfg"].get("name", "model"), dist.size, threads, device, plan.total_rows,
                 plan.steps_per_epoch, tcfg["epochs"])  # fmt: skip
    select_task, select_metric = parse_selector(tcfg["select_metric"], "train.select_metric")
    if select_metric.startswith("oracle") and not job.get("truth"):
        raise ValueError(f"train.select_metric {select_task}.{select_metric} needs a truth table for the validation days {job.get('lineage', {}).get('valid_days')}; there is none (choose a label metric such as ctcvr.logloss)")  # fmt: skip
    progress = Progress(dist.is_chief, total, tcfg["batch_size"], dist.size)
    best = start["best"] or {"value": -math.inf, "epoch": -1, "state": None, "metrics": None}
    history = list(best.get("history", []))
    step, stale = start["step"], 0
    for epoch in range(start["epoch"], tcfg["epochs"]):
        model.train()
        first = start["step_in_epoch"] if epoch == start["epoch"] else 0
        stream = training_batches(plan, columns, dist.rank, dist.size, seed=tcfg["seed"] + epoch,
                                  shuffle=tcfg["shuffle_row_groups"], workers=tcfg["reader_workers"],
                                  convert=layout.to_arrays)  # fmt: skip
        for _ in range(first):  # a resumed epoch skips the batches it already trained on
            next(stream)
        progress.resume()
        loss_sum = 0.0
        for step_in_epoch in range(first, plan.steps_per_epoch):
            seed_step(tcfg["seed"], dist.rank, step, device)
            batch = _to_device(as_tensors(next(stream)), device)
            out = model(batch)
            optimizers.step(out.loss, model, tcfg["grad_clip"])
            loss_sum += float(out.loss.detach())
            step += 1
            progress.update(step, epoch, loss_sum / (step_in_epoch - first + 1))
            if tcfg["checkpoint_every_steps"] and step % tcfg["checkpoint_every_steps"] == 0 and dist.is_chief:
                progress.pause()
                ckpt.save_checkpoint(ckpt_dir, model=model, optimizer=optimizers, step=step, epoch=epoch,
                                     step_in_epoch=step_in_epoch + 1, config_hash=job["config_hash"],
                                     best=_best_for_ckpt(best, history))  # fmt: skip
                progress.resume()
        progress.pause()
        stream.close()
        metrics = _validate(model, job, layout, dist, device)
        value = metrics[select_task][select_metric]
        history.append({"epoch": epoch, "step": step, "train_loss": dist.mean(loss_sum / max(1, plan.steps_per_epoch - first), "loss"),
                        "samples_per_second": progress.samples_per_second, **_flat(metrics)})  # fmt: skip
        if dist.is_chief:
            so_far = f"{best['value']:.5f} at epoch {best['epoch']}" if best["state"] is not None else "none yet"
            log.info("epoch %d: valid %s %s %.5f (best so far: %s)", epoch, select_task, select_metric, value, so_far)
        if best["state"] is None or improvement(select_metric, value, best["value"]) > 0:
            best = {"value": value, "epoch": epoch, "state": copy.deepcopy(model.state_dict()), "metrics": metrics}
            stale = 0
        else:
            stale += 1
        if dist.is_chief:
            ckpt.save_checkpoint(ckpt_dir, model=model, optimizer=optimizers, step=step, epoch=epoch + 1,
                                 step_in_epoch=0, config_hash=job["config_hash"], best=_best_for_ckpt(best, history))  # fmt: skip
        if stale >= tcfg["early_stopping_patience"]:
            if dist.is_chief:
                log.info("early stopping after epoch %d: no improvement for %d epochs", epoch, stale)
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    result = {"metrics": best["metrics"], "history": history, "best_epoch": best["epoch"], "world_size": dist.size,
              "steps": step, "samples_per_second": progress.samples_per_second}  # fmt: skip
    if dist.is_chief:
        from cvr.train.artifact import write_artifact

        write_artifact(out_dir, model=model.cpu(), layout=layout, job=job, result=result)
    dist.barrier()
    return result


def _flat(metrics: dict) -> dict:
    return {f"{task}_{name}": value for task, values in metrics.items() for name, value in values.items()}


def _best_for_ckpt(best: dict, history: list) -> dict:
    """What of the early-stopping state a checkpoint keeps (tensors and plain values only)."""
    import json

    return {
        "value": float(best["value"]),
        "epoch": int(best["epoch"]),
        "state": best["state"],
        "metrics_json": json.dumps(best["metrics"]),
        "history_json": json.dumps(history),
    }


def _resume(ckpt_dir: Path, config_hash: str, model, optimizers, dist) -> dict:
    path = ckpt.latest_checkpoint(ckpt_dir)
    if path is None:
        return {"step": 0, "epoch": 0, "step_in_epoch": 0, "best": {}}
    import json

    state = ckpt.load_checkpoint(path, config_hash)
    model.load_state_dict(state["model"])
    optimizers.load_state_dict(state["optimizer"])
    ckpt.restore_rng(state)
    saved = state["best"]
    best = {"value": saved["value"], "epoch": saved["epoch"], "state": saved["state"],
            "metrics": json.loads(saved["metrics_json"]), "history": json.loads(saved["history_json"])}  # fmt: skip
    if dist.is_chief:
        log.info("resumed from %s: epoch %d, step %d", path.name, state["epoch"], state["step"])
    return {"step": state["step"], "epoch": state["epoch"], "step_in_epoch": state["step_in_epoch"], "best": best}
