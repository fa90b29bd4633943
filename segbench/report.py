"""``segbench report``: one table over many runs' ``metrics.json``.

Each row names the run, model, data, protocol and the recipe facts that decide a number
(iterations, global batch, crop, precision), so a table never loses the conditions it was
measured under. A run whose training has not finished is shown as such, never as a number.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from omegaconf import DictConfig

from segbench.errors import SegbenchError

COLUMNS = ("run", "model", "data", "split", "protocol", "iters", "batch", "crop", "mIoU", "mAcc", "aAcc", "fwIoU", "status")


def _pct(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _protocol(protocol: dict | None) -> str:
    protocol = protocol or {}
    scales = protocol.get("scales", [1.0])
    text = "SS" if list(scales) == [1.0] else "MS(" + ",".join(f"{s:g}" for s in scales) + ")"
    if protocol.get("flip"):
        text += "+flip"
    return text


def collect(root: Path) -> list[dict]:
    """One row per ``metrics.json`` under ``root`` (sorted by path)."""
    root = Path(root)
    if not root.exists():
        raise SegbenchError(f"no runs at {root}; pass runs=<dir holding run directories>")
    rows = []
    for path in sorted(root.rglob("metrics.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            rows.append({"run": str(path.parent.relative_to(root)), "status": f"unreadable metrics.json ({err})"})
            continue
        info = record.get("run", {})
        finished = info.get("finished", True)
        crop = info.get("crop_size")
        rows.append({
            "run": str(path.parent.relative_to(root)) or ".",
            "model": str(info.get("model", "")).rsplit(".", 1)[-1],
            "data": info.get("data", ""),
            "split": record.get("split", ""),
            "protocol": _protocol(record.get("protocol")),
            "iters": f"{info.get('iterations', '')}/{info.get('max_iters', '')}" if info else "",
            "batch": info.get("global_batch", ""),
            "crop": "x".join(map(str, crop)) if isinstance(crop, (list, tuple)) else (crop or ""),
            "mIoU": _pct(record.get("mIoU")) if finished else "",
            "mAcc": _pct(record.get("mAcc")) if finished else "",
            "aAcc": _pct(record.get("aAcc")) if finished else "",
            "fwIoU": _pct(record.get("fwIoU")) if finished else "",
            "status": ("done" if finished else "unfinished") + (f" ({record.get('source')})" if record.get("source") else ""),
        })
    return rows


def to_markdown(rows: list[dict], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict], columns=COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run(cfg: DictConfig) -> list[dict]:
    rows = collect(Path(cfg.runs))
    if not rows:
        raise SegbenchError(f"no metrics.json found under {cfg.runs}")
    table = to_markdown(rows)
    print(table)
    if cfg.get("output"):
        out = Path(cfg.output)
        out.write_text(to_csv(rows) if out.suffix == ".csv" else table + "\n")
        print(f"wrote {out}")
    return rows
