"""Model registry in a folder: numbered versions, an atomically switched production pointer, a promotion history.

Layout under the registry root:
  versions/v0001/        a copy of a model artifact folder plus registry.json (version, source, run id, time)
  production.json        the pointer {version, path, promoted_at, reason}; replaced with os.replace, never edited
  history.jsonl          one JSON line per promote / rollback: time, action, version, previous, reason, metrics
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from cvr.ops.locks import FileLock, LockHeldError
from cvr.ops.state import read_json
from cvr.storage.tables import write_json_atomic

REQUIRED_ARTIFACT_FILES = ("weights.pt", "scoring.pt", "hashing_spec.json", "metrics.json")
VERSION_FILE = "registry.json"


class RegistryError(ValueError):
    """A registry operation cannot be done; the message names the registry folder and the version or file."""


def version_name(version: int) -> str:
    return f"v{version:04d}"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ModelRegistry:
    def __init__(self, root: str | os.PathLike, keep: int = 5):
        if keep < 1:
            raise RegistryError(f"{root}: keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / "production.json"
        self.history_path = self.root / "history.jsonl"

    # ---- reading -------------------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        if not self.versions_dir.is_dir():
            return []
        found = []
        for entry in self.versions_dir.iterdir():
            if entry.name.startswith("v") and entry.name[1:].isdigit() and (entry / VERSION_FILE).is_file():
                found.append(int(entry.name[1:]))
        return sorted(found)

    def path(self, version: int) -> Path:
        folder = self.versions_dir / version_name(version)
        if not (folder / VERSION_FILE).is_file():
            raise RegistryError(f"{self.root}: version {version} does not exist (have {self.versions()})")
        return folder

    def info(self, version: int) -> dict[str, Any]:
        folder = self.path(version)
        info = read_json(folder / VERSION_FILE)
        metrics_file = folder / "metrics.json"
        info["metrics"] = read_json(metrics_file) if metrics_file.is_file() else {}
        info["path"] = str(folder)
        info["production"] = version == self.production_version()
        return info

    def production_version(self) -> int | None:
        if not self.pointer_path.is_file():
            return None
        return int(read_json(self.pointer_path)["version"])

    def production(self) -> Path | None:
        version = self.production_version()
        return None if version is None else self.path(version)

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.is_file():
            return []
        lines = self.history_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def find_run(self, run_id: str) -> int | None:
        """The version registered with `run_id`, so a retried register does not create a second copy."""
        for version in self.versions():
            if read_json(self.path(version) / VERSION_FILE).get("run_id") == run_id:
                return version
        return None

    # ---- writing -------------------------------------------------------------------------------------------
    def register(self, artifact_dir: str | os.PathLike, run_id: str | None = None, note: str = "") -> int:
        """Copy an artifact folder in as the next version; returns its number. Idempotent per run_id."""
        artifact_dir = Path(artifact_dir)
        missing = [name for name in REQUIRED_ARTIFACT_FILES if not (artifact_dir / name).is_file()]
        if missing:
            raise RegistryError(f"{artifact_dir}: not a model artifact, missing {', '.join(missing)}")
        with self._locked():
            if run_id and (existing := self.find_run(run_id)) is not None:
                return existing
            version = (self.versions() or [0])[-1] + 1
            staging = self.root / f".staging-{uuid.uuid4().hex}"
            shutil.copytree(artifact_dir, staging)
            record = {"version": version, "source": str(artifact_dir.resolve()), "run_id": run_id, "note": note,
                      "registered_at": _utc(time.time())}  # fmt: skip
            write_json_atomic(staging / VERSION_FILE, record)
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            os.rename(staging, self.versions_dir / version_name(version))  # appears complete or not at all
            self._prune()
            return version

    def promote(self, version: int, reason: str, metrics: dict[str, Any] | None = None) -> None:
        with self._locked():
            self._switch(version, "promote", reason, metrics)

    def rollback(self, reason: str = "manual rollback") -> int:
        """Point production back at the version that was production before the current one; returns it."""
        with self._locked():
            stack = self._production_stack()
            if len(stack) < 2:
                raise RegistryError(f"{self.root}: nothing to roll back to (production history {stack})")
            target = stack[-2]
            self._switch(target, "rollback", reason, None)
            return target

    def _switch(self, version: int, action: str, reason: str, metrics: dict[str, Any] | None) -> None:
        folder = self.path(version)
        previous = self.production_version()
        now = time.time()
        pointer = {"version": version, "path": str(folder.relative_to(self.root)), "promoted_at": _utc(now),
                   "reason": reason, "action": action}  # fmt: skip
        write_json_atomic(self.pointer_path, pointer)
        if metrics is None:
            metrics = self.info(version)["metrics"]
        entry = {"time": _utc(now), "action": action, "version": version, "previous": previous, "reason": reason,
                 "metrics": metrics}  # fmt: skip
        with open(self.history_path, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _production_stack(self) -> list[int]:
        """Replay history: a promote pushes its version, a rollback pops back to the version below."""
        stack: list[int] = []
        for entry in self.history():
            if entry["action"] == "promote":
                if not stack or stack[-1] != entry["version"]:
                    stack.append(entry["version"])
            elif entry["action"] == "rollback":
                while stack and stack[-1] != entry["version"]:
                    stack.pop()
                if not stack:
                    stack.append(entry["version"])
        return stack

    def _prune(self) -> None:
        """Delete all but the newest `keep` versions, never production nor the version a rollback would restore."""
        versions = self.versions()
        protected = set(versions[-self.keep :]) | set(self._production_stack()[-2:])
        for version in versions:
            if version not in protected:
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                os.rename(self.versions_dir / version_name(version), trash)  # vanishes from listings at once
                shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self, wait_seconds: float = 60.0):
        lock = FileLock(self.root / ".registry.lock", max_age_seconds=3600)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                lock.acquire()
                break
            except LockHeldError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            yield
        finally:
            lock.release()


def registry_for(cfg) -> ModelRegistry:
    """The registry of a Config: cfg.nightly.registry or <root>/registry, keeping cfg.nightly.keep_versions."""
    root = cfg.nightly.registry or str(Path(cfg.storage.root) / "registry")
    return ModelRegistry(root, keep=cfg.nightly.keep_versions)
