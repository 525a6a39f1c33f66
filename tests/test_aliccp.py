"""ingest-aliccp on a fixture in the raw Ali-CCP layout (tests/fixtures/aliccp/make_fixture.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvr.pipeline.aliccp import FIELDS, field_column, ingest_aliccp, read_lines
from cvr.pipeline.hashing import hash_features, load_spec

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "aliccp"
SKELETON = FIXTURE / "sample_skeleton_test.csv"
COMMON = FIXTURE / "common_features_test.csv"
DS = "2026-02-01"


@pytest.fixture(scope="module")
def ingested(spark):
    samples, quarantine, counts = ingest_aliccp(read_lines(spark, str(SKELETON)), read_lines(spark, str(COMMON)), DS)
    return {r["impression_id"]: r.asDict() for r in samples.collect()}, quarantine.collect(), counts, samples


def parse_line(raw: str) -> dict:
    """Independent reading of one good line: {field: id} (single-valued fields only)."""
    feature_list = raw.rstrip("\n").split(",")[-1]
    return {e.split("\x02")[0]: e.split("\x02")[1].split("\x03")[0] for e in feature_list.split("\x01")}


def test_counts_match_the_fixture(ingested):
    _, _, counts, _ = ingested
    assert counts == json.loads((FIXTURE / "expected_counts.json").read_text())
    for c in counts.values():
        assert c["input"] == c["used"] + c["deduplicated"] + sum(c["quarantined"].values())


def test_exact_row_joins_common_features(ingested):
    rows, _, _, samples = ingested
    assert samples.columns == ["impression_id", *[field_column(f) for f in FIELDS], "click", "micro", "macro", "conversion", "ds"]  # fmt: skip
    skeleton_lines = SKELETON.read_bytes().decode("utf-8", "replace").splitlines()
    common_lines = COMMON.read_text().splitlines()
    raw = next(line for line in skeleton_lines if line.startswith("s006,"))
    common = parse_line(common_lines[0])  # ck000, the first copy of that key
    row = rows["s006"]
    item_fields = parse_line(raw)
    for field_id, value in item_fields.items():
        assert row[field_column(field_id)] == value
    assert row[field_column("101")] == common["101"] and row[field_column("129")] == common["129"]
    # 109_14 has (7, 0.5), (3, 0.9), (2, 0.9): highest weight, tie -> largest id string.
    assert row[field_column("109_14")] == "3"
    assert (row["click"], row["micro"], row["macro"], row["conversion"], row["ds"]) == (0, 0, 0, 0, DS)


def test_labels_and_first_copy_wins(ingested):
    rows, _, _, _ = ingested
    assert len(rows) == 40
    assert (rows["s000"]["click"], rows["s000"]["conversion"]) == (1, 1)
    assert rows["s000"][field_column("206")] is not None  # the later one-entry repeat of s000 was dropped
    assert sum(r["conversion"] for r in rows.values()) == 5 and all(
        r["click"] >= r["conversion"] for r in rows.values()
    )


def test_quarantine_rows_name_reason_and_keep_the_line(ingested):
    _, quarantine, _, _ = ingested
    by_reason = {(r["source"], r["reason"]): json.loads(r["record"])["line"] for r in quarantine}
    assert by_reason[("sample_skeleton", "conversion_without_click")].startswith("bad_conv,0,1,")
    assert by_reason[("sample_skeleton", "unknown_common_key")].startswith("bad_key,")
    assert by_reason[("common_features", "bad_feature_count")].startswith("ck_bad,5,")
    assert {r["job"] for r in quarantine} == {"ingest-aliccp"}


def test_aliccp_spec_hashes_the_ingested_table(ingested, repo_root):
    _, _, _, samples = ingested
    spec = load_spec(repo_root / "conf" / "features" / "aliccp.yaml")
    features = hash_features(samples, spec).collect()
    assert len(features) == 40
    for sparse in spec.fields:
        assert all(0 <= r[f"f_{sparse.name}"] < sparse.buckets for r in features)


def test_stage_writes_table_quarantine_and_report(spark, tmp_path):
    from cvr.config import load_config
    from cvr.pipeline.stages import StageInputError, report_path, run_ingest_aliccp
    from cvr.storage import load_schema, read_table

    cfg = load_config(root=str(tmp_path))
    report = run_ingest_aliccp(spark, cfg, str(SKELETON), str(COMMON), DS)
    assert report["output"]["rows"] == 40 and report["quarantine"]["rows"] == 8
    assert json.loads(Path(report_path(cfg, "ingest-aliccp", DS)).read_text())["counts"] == report["counts"]
    table = read_table(spark, str(tmp_path), cfg.samples.aliccp_table, ds=DS)
    assert table.count() == 40
    assert table.columns == load_schema("aliccp_samples").names  # written to its declared contract
    with pytest.raises(StageInputError, match=r"--skeleton: file not found: /nope.csv"):
        run_ingest_aliccp(spark, cfg, "/nope.csv", str(COMMON), DS)


def test_rerun_whose_lines_are_all_malformed_removes_the_days_samples(spark, tmp_path):
    from cvr.config import load_config
    from cvr.pipeline.stages import run_ingest_aliccp
    from cvr.storage import list_partitions, table_exists

    cfg = load_config(root=str(tmp_path))
    run_ingest_aliccp(spark, cfg, str(SKELETON), str(COMMON), DS)
    assert DS in list_partitions(str(tmp_path), cfg.samples.aliccp_table)
    corrected = tmp_path / "skeleton_all_bad.csv"
    corrected.write_text("not,a,skeleton,line\n")
    report = run_ingest_aliccp(spark, cfg, str(corrected), str(COMMON), DS)
    assert report["output"]["deleted_partitions"] == [DS]
    assert report["counts"]["sample_skeleton"]["quarantined"] == {"wrong_column_count": 1}
    assert not table_exists(str(tmp_path), cfg.samples.aliccp_table)


def test_declared_schema_lists_every_field_in_output_order(ingested):
    from cvr.storage import load_schema

    *_, samples = ingested
    expected = ["impression_id", *(field_column(f) for f in FIELDS), "click", "micro", "macro", "conversion", "ds"]
    assert load_schema("aliccp_samples").names == expected == samples.columns
