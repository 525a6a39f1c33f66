"""Per-run stage state: a JSON file rewritten atomically after every stage, so a re-run resumes where it failed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cvr.storage.tables import write_json_atomic


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); remove it to start the run over") from exc


class StageState:
    """Stage records {name: {status, started, finished, seconds, result}} for one run key, stored at `path`."""

    def __init__(self, path: str | os.PathLike, key: dict[str, Any]):
        self.path = Path(path)
        self.data: dict[str, Any] = {**key, "stages": {}, "status": "new"}
        if self.path.exists():
            stored = read_json(self.path)
            for name, value in key.items():
                if stored.get(name) != value:
                    raise ValueError(f"{self.path}: field '{name}' is {stored.get(name)!r}, expected {value!r}")
            self.data = stored

    def is_done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def result(self, stage: str) -> dict[str, Any]:
        return self.data["stages"].get(stage, {}).get("result", {})

    def mark_started(self, stage: str) -> None:
        attempts = self.data["stages"].get(stage, {}).get("attempts", 0) + 1
        self.data["stages"][stage] = {"status": "running", "started": time.time(), "attempts": attempts}
        self.data["status"] = "running"
        self.save()

    def mark_done(self, stage: str, result: dict[str, Any], seconds: float) -> None:
        record = self.data["stages"][stage]
        record.update(status="done", finished=time.time(), seconds=round(seconds, 3), result=result)
        self.save()

    def mark_failed(self, stage: str, error: str, seconds: float) -> None:
        record = self.data["stages"][stage]
        record.update(status="failed", finished=time.time(), seconds=round(seconds, 3), error=error)
        self.data["status"] = "failed"
        self.save()

    def set_status(self, status: str, **extra: Any) -> None:
        self.data.update(status=status, **extra)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)
