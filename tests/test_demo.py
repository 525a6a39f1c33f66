"""The main job: day selection, and (slow) the whole path on tiny data with two Horovod ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cvr.config import load_config
from cvr.demo import complete_days


def test_validation_day_is_the_newest_day_with_a_complete_attribution_window():
    cfg = load_config(
        overrides={"simulate": {"start_date": "2026-01-01", "days": 4}, "samples": {"attribution_window_days": 1}}
    )
    assert complete_days(cfg) == (["2026-01-01", "2026-01-02"], ["2026-01-03"])


def test_too_few_days_is_a_clear_error():
    cfg = load_config(overrides={"simulate": {"days": 2}, "samples": {"attribution_window_days": 1}})
    with pytest.raises(ValueError, match="at least 3 simulated days"):
        complete_days(cfg)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_both_models(tmp_path):
    cvr = str(Path(sys.executable).parent / "cvr")
    cmd = [cvr, "demo", "--root", str(tmp_path), "--days", "4", "--impressions-per-day", "20000", "--np", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "reports" / "demo.json").read_text())
    assert set(report["results"]) == {"esmm", "cl4cvr"}
    for metrics in report["results"].values():
        assert metrics["world_size"] == 2
        assert 0.5 < metrics["ctr"]["auc"] <= 1.0 and metrics["cvr"]["rows"] > 0
    assert "| esmm | cvr |" in proc.stdout
