"""bench/run_all.py: runs the benchmark scripts, collects their JSON, rewrites only the README's marked section."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_runner():
    spec = importlib.util.spec_from_file_location("bench_run_all", REPO / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = load_runner()

README = textwrap.dedent(
    """\
    # cvr

    Intro that must survive.

    ## Benchmarks

    <!-- bench:start -->
    old table | stale
    <!-- bench:end -->

    ## After

    Text after the section, also kept.
    """
)


def write_script(repo: Path, name: str, body: str) -> None:
    path = repo / "bench" / name / "run.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))


def test_runs_existing_benchmarks_passes_quick_only_to_scripts_that_take_it(tmp_path):
    write_script(
        tmp_path,
        "pipeline",
        """\
        import json, sys
        from pathlib import Path
        quick = "--quick" in sys.argv  # argparse would accept --quick here
        Path("bench/results").mkdir(parents=True, exist_ok=True)
        Path("bench/results/pipeline.json").write_text(json.dumps({"quick": quick, "rows_per_s": 1234.5}))
        """,
    )
    write_script(
        tmp_path,
        "models",
        """\
        import sys
        sys.exit(3 if len(sys.argv) > 1 else 0)  # fails if it receives a flag it does not know
        """,
    )
    runs = run_all.run_benchmarks(tmp_path, quick=True)
    assert runs[0]["benchmark"] == "pipeline" and runs[0]["status"] == "ok"
    assert runs[1]["benchmark"] == "models" and runs[1]["status"] == "ok"
    assert runs[2] == {"benchmark": "train", "status": "missing"}
    results = run_all.load_results(tmp_path / "bench" / "results")
    assert results == {"pipeline": {"quick": True, "rows_per_s": 1234.5}}


def test_a_failing_benchmark_is_reported(tmp_path):
    write_script(tmp_path, "train", "raise SystemExit(2)\n")
    runs = run_all.run_benchmarks(tmp_path, quick=False)
    assert runs[2]["status"] == "failed (exit 2)"


def test_markdown_shows_notes_scalars_and_one_table_per_list_of_records():
    explanation = "forward + backward per step, " * 4
    results = {
        "models": {
            "what": explanation,
            "setup": {"batch": 1024},
            "ratio": 1.5,
            "ok": True,
            "note": "a|b",
            "models": [{"model": "esmm", "ms": 12.34567}, {"model": "lr", "ms": 1.0, "extra": 2}],
        }
    }
    text = run_all.results_markdown(
        results, runs=[{"benchmark": "models", "status": "ok", "seconds": 3.0}], when="2026-01-01 00:00 UTC"
    )
    assert "Refreshed 2026-01-01 00:00 UTC" in text and "models ok (3.0s)" in text and "**models**" in text
    assert f"- what: {explanation}" in text  # long explanations are kept whole, outside the table
    assert "| setup.batch | 1024 |" in text and "| ratio | 1.5 |" in text and "| ok | true |" in text
    assert "| note | a\\|b |" in text  # a pipe would break the table
    assert "| model | ms | extra |" in text and "| esmm | 12.35 | – |" in text and "| lr | 1 | 2 |" in text


def test_only_the_marked_section_of_the_readme_is_rewritten(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert run_all.update_readme(readme, "| benchmark | metric | value |\n|---|---|---|\n| a | b | 1 |\n")
    text = readme.read_text()
    before, _, rest = README.partition("<!-- bench:start -->")
    _, _, after = rest.partition("<!-- bench:end -->")
    assert text.startswith(before + "<!-- bench:start -->\n| benchmark | metric | value |")
    assert text.endswith("| a | b | 1 |\n<!-- bench:end -->" + after)
    assert "old table" not in text
    # A second refresh replaces the first one instead of appending.
    run_all.update_readme(readme, "second")
    assert readme.read_text() == before + "<!-- bench:start -->\nsecond\n<!-- bench:end -->" + after


def test_readme_without_markers_is_left_alone_with_a_message(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# cvr\n\nno markers here\n")
    assert not run_all.update_readme(readme, "table")
    assert readme.read_text() == "# cvr\n\nno markers here\n"
    assert "<!-- bench:start -->" in capsys.readouterr().out


@pytest.mark.skipif(not (REPO / "README.md").is_file(), reason="the lead's README is not there yet")
def test_main_on_a_copy_of_the_project_readme(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    original = readme.read_text()
    results = tmp_path / "results"
    results.mkdir()
    (results / "train.json").write_text(json.dumps({"samples_per_second": 999.0}))
    assert run_all.main(["--no-run", "--readme", str(readme), "--results", str(results)]) == 0
    updated = readme.read_text()
    if "<!-- bench:start -->" in original and "<!-- bench:end -->" in original:
        assert "**train**" in updated and "| samples_per_second | 999 |" in updated
        assert updated.split("<!-- bench:start -->")[0] == original.split("<!-- bench:start -->")[0]
        assert updated.split("<!-- bench:end -->")[1] == original.split("<!-- bench:end -->")[1]
    else:
        assert updated == original


def test_run_all_is_a_script(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    empty = tmp_path / "results"
    empty.mkdir()
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run_all.py"),
            "--no-run",
            "--readme",
            str(readme),
            "--results",
            str(empty),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "refreshed" in out.stdout
    assert "No benchmark results yet" in readme.read_text()
