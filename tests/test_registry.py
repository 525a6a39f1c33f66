"""Model registry: numbered versions, atomic production pointer, promotion history, keep-K pruning, rollback."""

from __future__ import annotations

import json
import os
import threading

import pytest

from cvr.ops.registry import REQUIRED_ARTIFACT_FILES, ModelRegistry, RegistryError


def make_artifact(folder, tag: str, cvr_auc: float = 0.7):
    folder.mkdir(parents=True)
    for name in REQUIRED_ARTIFACT_FILES:
        (folder / name).write_text(tag)
    (folder / "metrics.json").write_text(json.dumps({"cvr": {"auc": cvr_auc}, "tag": tag}))
    return folder


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(tmp_path / "registry", keep=3)


def test_register_numbers_versions_and_copies_the_artifact(registry, tmp_path):
    first = registry.register(make_artifact(tmp_path / "a", "A"))
    second = registry.register(make_artifact(tmp_path / "b", "B"))
    assert (first, second) == (1, 2)
    assert registry.versions() == [1, 2]
    assert (registry.path(2) / "scoring.pt").read_text() == "B"
    (tmp_path / "a" / "scoring.pt").write_text("changed later")
    assert (registry.path(1) / "scoring.pt").read_text() == "A", "a version must be a copy, not a link"
    assert registry.info(1)["metrics"]["tag"] == "A"
    assert registry.production() is None


def test_register_refuses_incomplete_artifact_naming_the_missing_file(registry, tmp_path):
    folder = make_artifact(tmp_path / "a", "A")
    (folder / "scoring.pt").unlink()
    with pytest.raises(RegistryError, match=r"missing scoring\.pt"):
        registry.register(folder)
    assert registry.versions() == []


def test_register_is_idempotent_per_run_id(registry, tmp_path):
    artifact = make_artifact(tmp_path / "a", "A")
    assert registry.register(artifact, run_id="night-1") == 1
    assert registry.register(artifact, run_id="night-1") == 1
    assert registry.register(artifact, run_id="night-2") == 2


def test_promote_switches_pointer_and_appends_history(registry, tmp_path):
    for tag in "AB":
        registry.register(make_artifact(tmp_path / tag, tag))
    registry.promote(1, "first")
    registry.promote(2, "better", metrics={"cvr": {"auc": 0.8}})
    assert registry.production_version() == 2
    assert registry.production() == registry.path(2)
    pointer = json.loads((registry.root / "production.json").read_text())
    assert pointer["version"] == 2 and pointer["reason"] == "better"
    history = registry.history()
    assert [(h["action"], h["version"], h["previous"]) for h in history] == [("promote", 1, None), ("promote", 2, 1)]
    assert history[1]["metrics"] == {"cvr": {"auc": 0.8}}
    assert history[0]["metrics"]["cvr"]["auc"] == 0.7  # taken from the version's metrics.json
    assert all("time" in h and h["reason"] for h in history)


def test_promote_unknown_version_fails_and_keeps_production(registry, tmp_path):
    registry.register(make_artifact(tmp_path / "a", "A"))
    registry.promote(1, "first")
    with pytest.raises(RegistryError, match="version 9 does not exist"):
        registry.promote(9, "typo")
    assert registry.production_version() == 1
    assert len(registry.history()) == 1


def test_pointer_switch_is_atomic_for_concurrent_readers(registry, tmp_path):
    for tag in "AB":
        registry.register(make_artifact(tmp_path / tag, tag))
    registry.promote(1, "start")
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(json.loads((registry.root / "production.json").read_text())["version"])
            except Exception as exc:  # a torn read would show up here
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(100):
        registry.promote(1 + i % 2, f"flip {i}")
    stop.set()
    thread.join()
    assert not errors
    assert seen <= {1, 2}
    assert not [p for p in os.listdir(registry.root) if p.endswith(".tmp")]


def test_keep_k_prunes_oldest_but_never_production(registry, tmp_path):
    registry.register(make_artifact(tmp_path / "v1", "1"))
    registry.promote(1, "only one")
    for i in range(2, 7):
        registry.register(make_artifact(tmp_path / f"v{i}", str(i)))
    assert registry.versions() == [1, 4, 5, 6], "keep the newest 3 plus production v1"
    assert (registry.production() / "scoring.pt").read_text() == "1"
    assert not [p for p in os.listdir(registry.root) if p.startswith((".trash", ".staging"))]


def test_rollback_restores_previous_production_step_by_step(registry, tmp_path):
    for tag in "ABC":
        registry.register(make_artifact(tmp_path / tag, tag))
    registry.promote(1, "a")
    registry.promote(2, "b")
    registry.promote(3, "c")
    assert registry.rollback("c broke scoring") == 2
    assert registry.production_version() == 2
    assert registry.rollback("b also bad") == 1
    assert registry.production_version() == 1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    actions = [(h["action"], h["version"]) for h in registry.history()]
    assert actions[-2:] == [("rollback", 2), ("rollback", 1)]


def test_rollback_target_survives_pruning(tmp_path):
    registry = ModelRegistry(tmp_path / "registry", keep=1)
    registry.register(make_artifact(tmp_path / "a", "A"))
    registry.promote(1, "a")
    registry.register(make_artifact(tmp_path / "b", "B"))
    registry.promote(2, "b")
    registry.register(make_artifact(tmp_path / "c", "C"))
    assert registry.versions() == [1, 2, 3]  # 3 newest, 2 production, 1 the rollback target
    assert registry.rollback() == 1


def test_registry_commands(tmp_path, capsys):
    from cvr.cli.main import main

    registry = ModelRegistry(tmp_path / "registry")
    for tag in "AB":
        registry.register(make_artifact(tmp_path / tag, tag, cvr_auc=0.6 if tag == "A" else 0.65))
    root = ["--root", str(tmp_path)]
    assert main(["registry", *root, "promote", "1", "--reason", "first"]) == 0
    assert main(["registry", *root, "promote", "2", "--reason", "second"]) == 0
    capsys.readouterr()
    assert main(["registry", *root, "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("  v0001") and listing[1].startswith("* v0002") and "cvr_auc=0.65" in listing[1]
    assert main(["registry", *root, "rollback", "--reason", "drill"]) == 0
    assert "production is now v0001" in capsys.readouterr().out
    assert main(["registry", *root, "history"]) == 0
    assert [json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()] == [
        "promote",
        "promote",
        "rollback",
    ]
    assert main(["registry", *root, "show", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
