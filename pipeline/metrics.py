"""Per-iteration metrics: one JSON object per line in `metrics.jsonl` plus TensorBoard scalars.

Each row is `{"iteration": i, "<group>/<name>": value, ...}` with plain floats (non-finite values are
written as null, so the file stays strict JSON). Rows are appended and fsynced. On resume the file is
cut back to the rows of complete iterations (`MetricsLogger(..., completed_iterations=k)` keeps rows with
iteration < k and drops a torn last line), and TensorBoard events from step k on are purged, so a resumed
run's metrics equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.manifest import atomic_write_text


def _clean(value: Any, key: str) -> float | int | str | None:
    """A JSON-safe scalar: tensors and numpy scalars become floats, non-finite floats become None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"metric {key!r}: expected a number or string, got {type(value).__name__}")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows of a metrics.jsonl file (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # torn final write (no newline yet): the iteration did not complete
                break
            raise ValueError(f"{path}:{n + 1}: not a JSON object: {line[:80]!r}") from None
    return rows


class MetricsLogger:
    """Append-only metrics for one run directory (JSONL + optional TensorBoard).

    Args:
        jsonl_path: the metrics.jsonl file.
        tensorboard_dir: where SummaryWriter writes events; None disables TensorBoard.
        completed_iterations: rows (and TensorBoard steps) with iteration >= this are removed first.
    """

    def __init__(
        self,
        jsonl_path: str | Path,
        tensorboard_dir: str | Path | None = None,
        *,
        completed_iterations: int = 0,
    ) -> None:
        self.path = Path(jsonl_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.truncate(completed_iterations)
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events at steps >= k written by an interrupted attempt.
            self._tb = SummaryWriter(str(tensorboard_dir), purge_step=completed_iterations)

    def truncate(self, completed_iterations: int) -> None:
        """Keep only rows with iteration < `completed_iterations` (atomic rewrite when anything changes)."""
        if not self.path.exists():
            return
        rows = read_metrics(self.path)
        kept = [r for r in rows if r["iteration"] < completed_iterations]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        if text != self.path.read_text():
            atomic_write_text(self.path, text)

    def log(self, iteration: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Append one row for `iteration` (fsynced) and mirror numeric values to TensorBoard."""
        row: dict[str, Any] = {"iteration": int(iteration)}
        for key, value in metrics.items():
            if key == "iteration":
                raise ValueError("metric name 'iteration' is reserved")
            row[key] = _clean(value, key)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, global_step=iteration)
            self._tb.flush()
        return row

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
