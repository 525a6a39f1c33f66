"""Run every benchmark, collect bench/results/*.json, and refresh the README's benchmark table.

Runs bench/pipeline/run.py, bench/models/run.py and bench/train/run.py (those that exist) as subprocesses
from the repository root; each writes its own bench/results/<name>.json. The README is only touched
between the markers `<!-- bench:start -->` and `<!-- bench:end -->`; without them a message says so.

    python bench/run_all.py [--quick] [--no-run] [--readme README.md] [--results bench/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = ("pipeline", "models", "train")
START_MARKER = "<!-- bench:start -->"
END_MARKER = "<!-- bench:end -->"
MAX_ROWS_PER_RESULT = 40
MAX_TEXT = 60


def run_benchmarks(repo: Path, quick: bool, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Run each existing bench/<name>/run.py; returns one record per benchmark (exit code, seconds or 'missing')."""
    records = []
    for name in BENCHMARKS:
        script = repo / "bench" / name / "run.py"
        if not script.is_file():
            print(f"bench {name}: {script.relative_to(repo)} not found, skipped")
            records.append({"benchmark": name, "status": "missing"})
            continue
        command = [sys.executable, str(script)]
        # Pass --quick only to scripts that declare it, so an older script is not broken by an unknown flag.
        if quick and "--quick" in script.read_text():
            command.append("--quick")
        print(f"bench {name}: {' '.join(command[1:])}", flush=True)
        started = time.time()
        try:
            code = subprocess.call(command, cwd=repo, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = -1
        seconds = round(time.time() - started, 1)
        status = "ok" if code == 0 else f"failed (exit {code})"
        print(f"bench {name}: {status} in {seconds}s", flush=True)
        records.append({"benchmark": name, "status": status, "seconds": seconds})
    return records


def load_results(results_dir: Path) -> dict[str, Any]:
    """Every bench/results/*.json by file stem; an unreadable file is reported in the table, not fatal."""
    results: dict[str, Any] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            results[path.stem] = {"error": f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno}"}
    return results


def scalar_leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten nested dicts/lists into (dotted key, scalar) pairs in document order."""
    if isinstance(obj, dict):
        return [pair for key, value in obj.items() for pair in scalar_leaves(value, f"{prefix}{key}.")]
    if isinstance(obj, list):
        return [pair for i, value in enumerate(obj) for pair in scalar_leaves(value, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), obj)]


def is_record_list(value: Any) -> bool:
    """A non-empty list of mappings: shown as its own table, one row per record."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def benchmark_markdown(name: str, data: Any) -> list[str]:
    """One benchmark: long texts as notes, scalars as a metric/value table, each list of records as a table."""
    if not isinstance(data, dict):
        data = {"value": data}
    notes = [(k, v) for k, v in data.items() if isinstance(v, str) and len(v) > MAX_TEXT]
    records = [(k, v) for k, v in data.items() if is_record_list(v)]
    skip = {k for k, _ in notes} | {k for k, _ in records}
    scalars = scalar_leaves({k: v for k, v in data.items() if k not in skip})
    lines = [f"**{name}**", ""]
    lines += [f"- {key}: {text}" for key, text in notes]
    if notes:
        lines.append("")
    if scalars:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {format_value(key)} | {format_value(value)} |" for key, value in scalars[:MAX_ROWS_PER_RESULT]]
        if len(scalars) > MAX_ROWS_PER_RESULT:
            lines.append(f"| … | {len(scalars) - MAX_ROWS_PER_RESULT} more in bench/results/{name}.json |")
        lines.append("")
    for key, rows in records:
        flat_rows = [dict(scalar_leaves(row)) for row in rows]
        columns = list(dict.fromkeys(column for row in flat_rows for column in row))
        lines += [f"{key}:", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
        lines += [
            "| " + " | ".join(format_value(row.get(c)) for c in columns) + " |"
            for row in flat_rows[:MAX_ROWS_PER_RESULT]
        ]
        lines.append("")
    return lines


def results_markdown(results: dict[str, Any], runs: list[dict[str, Any]] | None = None, when: str | None = None) -> str:
    """The README section: a header line, the run status of each benchmark, and the tables of every result."""
    when = when or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [f"Refreshed {when} by `cvr bench` on {machine}. Raw numbers: `bench/results/*.json`.", ""]
    if runs:
        status = "; ".join(
            f"{r['benchmark']} {r['status']}" + (f" ({r['seconds']}s)" if "seconds" in r else "") for r in runs
        )
        lines += [f"Runs: {status}.", ""]
    if not results:
        return "\n".join([*lines, "No benchmark results yet (bench/results/ holds no JSON)."])
    lines += headline_markdown(results)
    lines += ["<details><summary>All measurements</summary>", ""]
    for name, data in results.items():
        lines += benchmark_markdown(name, data)
    lines += ["</details>"]
    return "\n".join(lines).rstrip() + "\n"


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


# (label, benchmark, path into its JSON, unit or target text)
HEADLINES = (
    ("simulate", "pipeline", ("stages", "simulate", "rows_per_second"), "rows/s"),
    ("build-samples", "pipeline", ("stages", "build_samples", "rows_per_second"), "rows/s"),
    ("hash-features", "pipeline", ("stages", "hash_features", "rows_per_second"), "rows/s"),
    ("(build-samples + hash-features) / plain copy", "pipeline", ("ratio_to_copy",), "target <= 3"),
    ("same ratio, warm JVM (last round)", "pipeline", ("steady_state_ratio_to_copy",), "for reference"),
    ("same ratio, one fresh Spark session per stage", "pipeline", ("separate_sessions_ratio_to_copy",), "for reference"),
    ("floor: the same two writes, no classification / plain copy, warm", "pipeline", ("steady_state_floor_ratio_to_copy",), "lower bound of the warm ratio"),
    ("build-samples JIT compiler CPU / task CPU, first round", "pipeline", ("build_samples_jit_over_task_cpu",), "for reference"),
    ("ESMM train step, batch 1024", "models", ("models", "esmm", "ms_per_1000_samples"), "ms per 1k samples"),
    ("CL4CVR step / ESMM step", "models", ("cl4cvr_over_esmm_step_time",), "target <= 2.0"),
    ("CL4CVR step / ESMM step, whole-batch contrast", "models", ("cl4cvr_whole_batch_over_esmm_step_time",), "group_size 0, for reference"),
    ("Petastorm reader -> tensors", "train", ("reader_rows_per_s",), "rows/s"),
    ("raw pyarrow read (ceiling)", "train", ("pyarrow_rows_per_s",), "rows/s"),
    ("reader / pyarrow", "train", ("ratios", "reader_over_pyarrow"), "target >= 0.5"),
    ("reader / fastest training", "train", ("ratios", "reader_over_fastest_training"), "target >= 3"),
    ("ESMM training, 1 rank x 2 threads", "train", ("training", "esmm 1 rank x 2 threads", "samples_per_second"), "samples/s"),
    ("CL4CVR training, 1 rank x 2 threads", "train", ("training", "cl4cvr 1 rank x 2 threads", "samples_per_second"), "samples/s"),
    ("ESMM 2 ranks / 1 rank (1 thread each)", "train", ("ratios", "esmm_2ranks_over_1rank_1thread"), "target >= 1.6"),
    ("CL4CVR 2 ranks / 1 rank (1 thread each)", "train", ("ratios", "cl4cvr_2ranks_over_1rank_1thread"), "target >= 1.6"),
    ("ESMM 2 independent runs side by side / 1 rank", "train", ("ratios", "esmm_side_by_side_over_1rank_1thread"), "2-rank ceiling, free exchange"),
    ("CL4CVR 2 independent runs side by side / 1 rank", "train", ("ratios", "cl4cvr_side_by_side_over_1rank_1thread"), "2-rank ceiling, free exchange"),
)  # fmt: skip


def headline_markdown(results: dict[str, Any]) -> list[str]:
    """The few numbers a reader wants first; models' table keys per-model rows by name."""
    lines = ["| measurement | value | unit / target |", "|---|---|---|"]
    for label, bench, path, unit in HEADLINES:
        data = results.get(bench)
        if bench == "models" and path[0] == "models" and isinstance(data, dict):
            rows = {r.get("model"): r for r in data.get("models", []) if isinstance(r, dict)}
            value = _dig(rows, *path[1:])
        else:
            value = _dig(data, *path)
        if value is not None:
            lines.append(f"| {label} | {format_value(value)} | {unit} |")
    return [*lines, ""] if len(lines) > 2 else []


def replace_marked_section(text: str, body: str) -> str | None:
    """`text` with everything between the two markers replaced by `body`; None when the markers are absent."""
    start = text.find(START_MARKER)
    end = text.find(END_MARKER, start + len(START_MARKER)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[: start + len(START_MARKER)] + "\n" + body.strip("\n") + "\n" + text[end:]


def update_readme(readme: Path, body: str) -> bool:
    """Rewrite only the marked section of `readme` (atomically); False, with a message, when it cannot."""
    if not readme.is_file():
        print(f"README not updated: {readme} does not exist")
        return False
    updated = replace_marked_section(readme.read_text(), body)
    if updated is None:
        print(
            f"README not updated: {readme} has no '{START_MARKER}' ... '{END_MARKER}' section; add the two markers where the table belongs"
        )
        return False
    tmp = readme.with_name(f".{readme.name}.tmp-{os.getpid()}")
    tmp.write_text(updated)
    os.replace(tmp, readme)
    print(f"README benchmark section refreshed: {readme}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for benchmarks that accept --quick")
    parser.add_argument(
        "--no-run", action="store_true", help="do not run benchmarks; only collect results and refresh the README"
    )
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: none)")
    args = parser.parse_args(argv)
    runs = [] if args.no_run else run_benchmarks(REPO, args.quick, args.timeout)
    body = results_markdown(load_results(args.results), runs)
    update_readme(args.readme, body)
    return 1 if any(r["status"].startswith("failed") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
