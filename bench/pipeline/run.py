"""Pipeline speed benchmark: rows/second of simulate, build-samples and hash-features on local Spark, and the
ratio of (build-samples + hash-features) time to a plain Spark read-and-write copy of the same impressions,
measured in the same session (target: ratio <= 3).

Stages run in order simulate -> copy baseline -> build-samples -> hash-features, each on every simulated day;
the copy runs after simulate so that JVM warm-up is not charged to it. With --rounds N the copy, build-samples
and hash-features run N times over the same days in the same session: the headline ratio is the first round's
(the copy warm from simulate, the pipeline's operators cold), `steady_state_ratio_to_copy` the last round's (a
JIT-warm JVM), and every round is kept. `separate_sessions_ratio_to_copy` runs each of the three once more in a
Spark session of its own (a child process, a fresh JVM), as separate spark-submit jobs would: each stage's
JIT warm-up is then charged to that stage alone (session start-up is not timed, for any of them).
Each round ends with the floor (floor.py): the same two writes with no classification at all, the least any
build-samples + hash-features must take; `steady_state_floor_ratio_to_copy` is its last round's ratio to the copy.
Also records the CPU seconds of the Python driver and, per stage, of the Spark JVM by thread kind (tasks, the JIT
compilers, GC, the rest; from /proc): in a fresh JVM the JIT compilers take about as much CPU as the tasks.
Writes bench/results/pipeline.json and prints a table.

    .venv/bin/python bench/pipeline/run.py [--impressions 1000000] [--days 1] [--master local[*]] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "pipeline.json"
RATIO_TARGET = 3.0
SEPARATE_STAGES = ("copy_baseline", "build_samples", "hash_features")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, default=1_000_000, help="impressions in total (split over --days)")
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--format", choices=["parquet", "delta"], default="parquet")
    parser.add_argument("--config", help="base configuration file (e.g. conf/pipeline/default.yaml)")
    parser.add_argument("--root", help="table root (default: a temporary folder, removed afterwards)")
    parser.add_argument("--rounds", type=int, default=2, help="copy + build-samples + hash-features repeats")
    parser.add_argument("--quick", action="store_true", help="200k impressions: checks that the benchmark runs")
    parser.add_argument("--no-separate-sessions", action="store_true", help="skip the fresh-JVM-per-stage round")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--child-stage", choices=SEPARATE_STAGES, help=argparse.SUPPRESS)  # internal: one stage
    return parser.parse_args(argv)


class Clock:
    """Wall seconds, this process's CPU seconds and the Spark JVM's CPU seconds by thread kind of one timed block."""

    def __enter__(self):
        self.wall = time.perf_counter()
        self.cpu = _cpu()
        self.jvm = jvm_cpu_snapshot()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = _cpu() - self.cpu
        self.jvm_cpu = jvm_cpu_between(self.jvm, jvm_cpu_snapshot())


# JVM thread names (Linux truncates them to 15 characters) -> the kind reported
JVM_THREAD_KINDS = (("Executor task", "tasks"), ("C1 CompilerThre", "jit"), ("C2 CompilerThre", "jit"),
                    ("GC Thread", "gc"), ("G1 ", "gc"), ("GC Conc", "gc"))  # fmt: skip


def jvm_cpu_snapshot() -> dict | None:
    """CPU seconds so far of this process's child JVMs (the local Spark driver and executors): in all, and per
    live thread with its kind. Read from /proc; None where there is none (not Linux)."""
    if not os.path.isdir("/proc/self/task"):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total, threads = 0.0, {}
    for pid in _child_jvms():
        with contextlib.suppress(OSError, IndexError):  # the JVM ended
            total += _stat_seconds(Path(f"/proc/{pid}/stat").read_text(), ticks)
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError):  # the thread ended
                raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                kind = next((k for prefix, k in JVM_THREAD_KINDS if name.startswith(prefix)), None)
                threads[(pid, tid)] = (kind, _stat_seconds(raw, ticks))
    return {"total": total, "threads": threads}


def jvm_cpu_between(before: dict | None, after: dict | None) -> dict | None:
    """{total, tasks, jit, gc, rest}: CPU seconds spent between two snapshots. `rest` is everything else: driver
    threads, and threads that ended in between (the JIT's compiler threads come and go, so `jit` is a floor)."""
    if not before or not after:
        return None
    spent = {"total": after["total"] - before["total"], "tasks": 0.0, "jit": 0.0, "gc": 0.0}
    for key, (kind, seconds) in after["threads"].items():
        if kind:
            spent[kind] += seconds - before["threads"].get(key, (kind, 0.0))[1]
    spent["rest"] = spent["total"] - spent["tasks"] - spent["jit"] - spent["gc"]
    return spent


def _stat_seconds(stat: str, ticks: int) -> float:
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _child_jvms() -> list[str]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and Path(f"/proc/{entry}/comm").read_text().strip() == "java":
                found.append(entry)
    return found


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def copy_impressions(spark, root: str, days: list[str]) -> int:
    """The baseline: plain Spark read of the impressions partitions and a plain Parquet write of them."""
    from cvr.storage import table_files, table_path

    target = os.path.join(root, "bench_copy")
    files = table_files(root, "impressions", ds=days)
    df = spark.read.option("basePath", "file://" + table_path(root, "impressions")).parquet(*files)
    df.write.mode("overwrite").partitionBy("ds").parquet("file://" + target)
    return spark.read.parquet("file://" + target).count()


def _impressions(args: argparse.Namespace) -> int:
    return 200_000 if args.quick else args.impressions


def _config(args: argparse.Namespace, root: str):
    from cvr.config import load_config

    impressions = _impressions(args)
    return load_config(
        args.config,
        root=root,
        overrides={
            "spark": {
                "master": args.master,
                "driver_memory": args.driver_memory,
                "shuffle_partitions": args.shuffle_partitions,
            },
            "storage": {"format": args.format},
            "simulate": {"days": args.days, "impressions_per_day": impressions // args.days},
        },
    )


def run(args: argparse.Namespace) -> dict:
    from cvr.pipeline.simulate_stage import run_simulate
    from cvr.session import build_spark

    impressions = _impressions(args)
    root = args.root or tempfile.mkdtemp(prefix="cvr-bench-pipeline-")
    cfg = _config(args, root)
    try:
        spark = build_spark(cfg.spark, app_name="cvr-bench-pipeline")
        try:
            stages = {}
            with Clock() as clock:
                report = run_simulate(spark, cfg)
            days = report["days"]
            stages["simulate"] = _stage(
                clock,
                report["tables"]["impressions"]["rows"],
                extra={"rows_written": sum(t["rows"] for t in report["tables"].values())},
            )

            rounds = [_round(spark, cfg, root, days) for _ in range(max(1, args.rounds))]
            stages |= rounds[0]
        finally:
            spark.stop()
        separate = None if args.no_separate_sessions else _separate_sessions(args, root)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    ratio = _ratio(rounds[0])
    return {
        "what": "rows/second of each stage on local Spark; ratio = (build-samples + hash-features) / plain read+write copy of the impressions",
        "setup": {
            "impressions": impressions,
            "days": args.days,
            "master": args.master,
            "cores": os.cpu_count(),
            "format": args.format,
            "driver_memory": args.driver_memory,
            "shuffle_partitions": args.shuffle_partitions,
            "config": args.config,
            "rounds": max(1, args.rounds),
            "malformed_rate": cfg.simulate.malformed_rate,
            "attribution_window_days": cfg.samples.attribution_window_days,
        },
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "load_average": os.getloadavg(),
        },
        "stages": stages,
        "ratio_to_copy": round(ratio, 3),
        "steady_state_ratio_to_copy": round(_ratio(rounds[-1]), 3),
        "steady_state_floor_ratio_to_copy": round(_floor_ratio(rounds[-1]), 3),
        "rounds": [
            {name: stage["seconds"] for name, stage in r.items()}
            | {"ratio": round(_ratio(r), 3), "floor_ratio": round(_floor_ratio(r), 3)}
            for r in rounds
        ],
        "build_samples_jit_over_task_cpu": _jit_over_tasks(rounds[0]["build_samples"]),
        "separate_sessions": separate,
        "separate_sessions_ratio_to_copy": round(_ratio(separate), 3) if separate else None,
        "ratio_target": RATIO_TARGET,
        "ratio_met": ratio <= RATIO_TARGET,
    }


def _round(spark, cfg, root: str, days: list[str]) -> dict:
    """One copy baseline, build-samples and hash-features over `days` (a re-run replaces the same partitions),
    then the floor (floor.py): the same two writes without any classification. The floor runs last, its code
    paths warm from the stages before it, so only the last round's floor compares like with like."""
    with Clock() as clock:
        copied = copy_impressions(spark, root, days)
    return {
        "copy_baseline": _stage(clock, copied),
        "build_samples": _per_day(spark, cfg, days, "build"),
        "hash_features": _per_day(spark, cfg, days, "hash"),
        "floor_samples": _per_day(spark, cfg, days, "floor_samples"),
        "floor_hash_features": _per_day(spark, cfg, days, "floor_hash"),
    }


def _separate_sessions(args: argparse.Namespace, root: str) -> dict:
    """Each stage once more, in a child process with a Spark session of its own (as its own spark-submit)."""
    import subprocess

    passed = ["--root", root, "--master", args.master, "--driver-memory", args.driver_memory,
              "--shuffle-partitions", str(args.shuffle_partitions), "--format", args.format, "--days", str(args.days)]  # fmt: skip
    passed += ["--config", args.config] if args.config else []
    results = {}
    for stage in SEPARATE_STAGES:
        command = [sys.executable, __file__, *passed, "--child-stage", stage]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"separate-session {stage} exited with {done.returncode}:\n{tail}")
        results[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def run_child_stage(args: argparse.Namespace) -> dict:
    """One stage over every day of the table root, timed after the session has started."""
    from cvr.session import build_spark
    from cvr.storage import list_partitions

    cfg = _config(args, args.root)
    with Clock() as start:
        spark = build_spark(cfg.spark, app_name=f"cvr-bench-pipeline-{args.child_stage}")
    try:
        days = list_partitions(args.root, "impressions")
        if args.child_stage == "copy_baseline":
            with Clock() as clock:
                copied = copy_impressions(spark, args.root, days)
            stage = _stage(clock, copied)
        else:
            stage = _per_day(spark, cfg, days, "build" if args.child_stage == "build_samples" else "hash")
    finally:
        spark.stop()
    return stage | {"session_start_seconds": round(start.seconds, 3)}


def _jit_over_tasks(stage: dict) -> float | None:
    """JIT compiler CPU over task CPU in the Spark JVM during one stage (None without /proc)."""
    cpu = stage.get("jvm_cpu_seconds")
    return round(cpu["jit"] / cpu["tasks"], 3) if cpu and cpu["tasks"] > 0 else None


def _ratio(stages: dict, first: str = "build_samples", second: str = "hash_features") -> float:
    pipeline_seconds = stages[first]["seconds"] + stages[second]["seconds"]
    return pipeline_seconds / stages["copy_baseline"]["seconds"]


def _floor_ratio(stages: dict) -> float:
    return _ratio(stages, "floor_samples", "floor_hash_features")


def _per_day(spark, cfg, days: list[str], which: str) -> dict:
    """Run build-samples, hash-features or a floor stage for every day; rows = rows written (samples or features)."""
    from floor import hash_floor_features, write_floor_samples

    from cvr.pipeline.stages import run_build_samples, run_hash_features

    stage_fn = {"build": run_build_samples, "hash": run_hash_features,
                "floor_samples": write_floor_samples, "floor_hash": hash_floor_features}[which]  # fmt: skip
    seconds = cpu = 0.0
    rows = input_rows = 0
    jvm_per_day = []
    for ds in days:
        with Clock() as clock:
            report = stage_fn(spark, cfg, ds)
        seconds += clock.seconds
        cpu += clock.cpu_seconds
        jvm_per_day.append(clock.jvm_cpu)
        rows += int(report["output"]["rows"])
        input_rows += sum(int(c.get("input", 0)) for c in report.get("counts", {}).values() if isinstance(c, dict))
    stage = {"seconds": round(seconds, 3), "driver_cpu_seconds": round(cpu, 3), "rows": rows}
    stage["jvm_cpu_seconds"] = _rounded(_summed(jvm_per_day))
    stage["rows_per_second"] = round(rows / seconds, 1) if seconds else None
    if input_rows:
        stage["input_rows"] = input_rows
    return stage


def _stage(clock: Clock, rows: int, extra: dict | None = None) -> dict:
    stage = {"seconds": round(clock.seconds, 3), "driver_cpu_seconds": round(clock.cpu_seconds, 3), "rows": rows}
    stage["jvm_cpu_seconds"] = _rounded(clock.jvm_cpu)
    stage["rows_per_second"] = round(rows / clock.seconds, 1)
    return stage | (extra or {})


def _summed(cpu_by_kind: list[dict | None]) -> dict | None:
    """Kind-wise sum of jvm_cpu_between results; None when any is unknown."""
    if not cpu_by_kind or any(c is None for c in cpu_by_kind):
        return None
    return {k: sum(c[k] for c in cpu_by_kind) for k in cpu_by_kind[0]}


def _rounded(cpu_by_kind: dict | None) -> dict | None:
    return {k: round(v, 2) for k, v in cpu_by_kind.items()} if cpu_by_kind else None


def print_table(result: dict) -> None:
    print(
        f"pipeline benchmark: {result['setup']['impressions']:,} impressions, {result['setup']['master']}, {result['setup']['format']}"
    )
    print(f"{'stage':<16}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'JVM CPU s: tasks':>18}{'jit':>6}")
    for name, stage in result["stages"].items():
        jvm = stage.get("jvm_cpu_seconds") or {}
        cpu = f"{jvm.get('tasks', float('nan')):>18.1f}{jvm.get('jit', float('nan')):>6.1f}"
        print(f"{name:<16}{stage['rows']:>12,}{stage['seconds']:>10.1f}{stage['rows_per_second']:>12,.0f}{cpu}")
    verdict = "met" if result["ratio_met"] else "NOT met"
    print(
        f"(build-samples + hash-features) / copy = {result['ratio_to_copy']:.2f} (target <= {RATIO_TARGET}: {verdict})"
    )
    floor = result["steady_state_floor_ratio_to_copy"]
    print(f"floor (the same writes, no classification: floor.py) / copy, last round = {floor:.2f}")
    print("rounds (seconds): " + "; ".join(", ".join(f"{k} {v}" for k, v in r.items()) for r in result["rounds"]))
    if result["separate_sessions"]:
        seconds = ", ".join(f"{k} {v['seconds']}" for k, v in result["separate_sessions"].items())
        print(f"one session per stage (seconds): {seconds}, ratio {result['separate_sessions_ratio_to_copy']}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    args = parse_args(argv)
    if args.child_stage:
        print(json.dumps(run_child_stage(args)))
        return 0
    result = run(args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
