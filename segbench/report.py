"""``segbench report``: published vs measured, over many run directories.

For every run directory below ``runs=`` (one holding ``metrics.json``, or a sweep job's
``sweep_job.json``) the report reads

* the measured numbers: ``metrics.json`` (written by training-time validation; the published-vs-
  measured table compares this one) and every ``eval/<split>-<protocol>.json`` written by
  ``segbench eval`` (extra rows of the runs table, never replacing training's), and their ``run``
  block (iterations, global batch, crop, params, training time, peak memory);
* the recipe and the paper's numbers: the run's saved config (``config.yaml`` of a sweep job,
  ``.hydra/config.yaml`` of ``segbench train``, else ``last.pt['config']``), whose ``paper:``
  block comes from the experiment file (``conf/experiment/*.yaml``) and nowhere else.

It prints and writes (``output=REPORT.md``) three things: every run with the conditions its number
was measured under; per paper, the published number (metric, split, protocol, extra data, source)
beside the measured one with the difference and the paper's comparable row (its own ablation
without the extra data, or an independent reproduction); the deviations of each recipe. A PNG bar
chart (published / comparable / measured per experiment) goes next to the Markdown file.

A run whose training has not finished (or failed) is shown as such, never as a number. Runs
made with ``smoke=true`` (``make reproduce-smoke``) are labelled "smoke" everywhere.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segbench.engine.protocol import describe
from segbench.errors import SegbenchError
from segbench.tables import csv_table, markdown_table

COLUMNS = ("run", "model", "data", "split", "protocol", "iters", "batch", "crop", "mIoU", "mAcc", "aAcc", "fwIoU",
           "BF", "params_M", "train_time", "peak_mem_GB", "status")
PAPER_COLUMNS = ("experiment", "metric", "paper", "paper split", "paper protocol", "extra data (paper)",
                 "measured", "measured split", "measured protocol", "Δ", "comparable", "Δ comparable", "run", "status")
PERCENT_METRICS = ("mIoU", "mAcc", "aAcc", "fwIoU", "BF")
LOWER_IS_BETTER = ("pixel_error",)


def _pct(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _protocol(protocol: dict | None) -> str:
    return describe(protocol)


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return {"_error": str(err)}


def load_run_config(run_dir: Path) -> dict:
    """The run's saved config as a plain dict ({} when none can be read)."""
    for name in ("config.yaml", ".hydra/config.yaml"):
        path = Path(run_dir) / name
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
                return OmegaConf.to_container(cfg, resolve=False)
            except Exception:  # noqa: BLE001 -- a broken file falls through to the next source
                continue
    from segbench.engine.checkpoint import CheckpointError, UntrustedCheckpointError, load_checkpoint

    for name in ("last.pt", "best.pt"):
        path = Path(run_dir) / name
        if path.is_file():
            try:  # data only: a checkpoint that needs code to load stops the report with its name
                state = load_checkpoint(path, mmap=True)
                return dict(state.get("config") or {})
            except UntrustedCheckpointError:
                raise
            except CheckpointError:  # unreadable: the row shows what metrics.json says
                continue
    return {}


def _experiment_name(run_dir: Path, config: dict) -> str:
    paper = config.get("paper") or {}
    if paper.get("experiment"):
        return str(paper["experiment"])
    hydra = Path(run_dir) / ".hydra" / "hydra.yaml"
    if hydra.is_file():
        try:
            choice = OmegaConf.load(hydra).hydra.runtime.choices.get("experiment")
            if choice:
                return str(choice)
        except Exception:  # noqa: BLE001
            pass
    return ""


def find_runs(root: Path) -> list[Path]:
    root = Path(root)
    found = {p.parent for p in root.rglob("metrics.json")} | {p.parent for p in root.rglob("sweep_job.json")}
    found |= {p.parent.parent for p in root.rglob("eval/*.json")}
    return sorted(found)


def collect_runs(root: Path) -> list[dict]:
    """Everything the report needs about each run below ``root``."""
    root = Path(root)
    if not root.exists():
        raise SegbenchError(f"no runs at {root}; pass runs=<dir holding run directories>")
    runs = []
    for run_dir in find_runs(root):
        record = _read_json(run_dir / "metrics.json")
        job = _read_json(run_dir / "sweep_job.json") or {}
        config = load_run_config(run_dir)
        info = (record or {}).get("run", {})
        if record is None:
            status = job.get("status", "no metrics")
            status = {"running": "interrupted"}.get(status, status)
        elif "_error" in record:
            status = f"unreadable metrics.json ({record['_error']})"
        elif info.get("finished", True):
            status = "done"
        else:
            status = "unfinished"
        if job.get("status") == "failed":
            status = "failed"
        runs.append({
            "dir": run_dir,
            "name": str(run_dir.relative_to(root)) or ".",
            "record": record if record and "_error" not in record else {},
            "info": info,
            "config": config,
            "paper": config.get("paper") or None,
            "experiment": _experiment_name(run_dir, config),
            "smoke": bool(config.get("smoke")),
            "status": status,
            "error": job.get("error", ""),
        })
        runs += eval_runs(runs[-1])
    return runs


def eval_runs(run: dict) -> list[dict]:
    """One row per ``segbench eval`` record of a run (``<run>/eval/*.json``), after the run's own.

    They appear in the runs table only: the published-vs-measured table compares the training
    run's validation (``metrics.json``, under the recipe's ``eval_protocol``, which experiment
    files set to the paper's protocol), so a later eval under another protocol never replaces it."""
    rows = []
    for path in sorted((Path(run["dir"]) / "eval").glob("*.json")):
        record = _read_json(path) or {}
        if "_error" in record:
            continue
        info = record.get("run") or run["info"]
        finished = info.get("finished", True) if info else True
        rows.append({**run, "name": f"{run['name']} [eval/{path.name}]", "record": record, "info": info,
                     "paper": None, "status": "done" if finished else "unfinished", "error": ""})
    return rows


# ---- the runs table ---------------------------------------------------------------------------
def run_row(run: dict) -> dict:
    record, info = run["record"], run["info"]
    finished = run["status"] == "done"
    crop = info.get("crop_size")
    params = info.get("params")
    status = ", ".join([run["status"]] + (["smoke"] if run["smoke"] else [])
                       + ([f"scored by {record['source']}"] if record.get("source") else []))
    if run["error"]:
        status += f": {run['error']}"
    return {
        "run": run["name"],
        "model": str(info.get("model", "") or (run["config"].get("model") or {}).get("_target_", "")).rsplit(".", 1)[-1],
        "data": info.get("data", "") or (run["config"].get("data") or {}).get("name", ""),
        "split": record.get("split", ""),
        "protocol": _protocol(record.get("protocol")) if record else "",
        "iters": f"{info.get('iterations', '')}/{info.get('max_iters', '')}" if info else "",
        "batch": info.get("global_batch", ""),
        "crop": "x".join(map(str, crop)) if isinstance(crop, (list, tuple)) else (crop or ""),
        **{k: (_pct(record.get(k)) if finished else "") for k in PERCENT_METRICS},
        "params_M": f"{params['total'] / 1e6:.2f}" if isinstance(params, dict) else "",
        "train_time": _duration(info.get("train_time_s")),
        "peak_mem_GB": f"{info['peak_memory_bytes'] / 2**30:.2f}" if info.get("peak_memory_bytes") else "",
        "status": status,
    }


# ---- published vs measured ----------------------------------------------------------------------
def measured_value(record: dict, metric: str) -> float | None:
    """The run's number in the paper's unit: % for IoU/accuracy/BF, a fraction for pixel error."""
    if metric in PERCENT_METRICS:
        value = record.get(metric)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else 100 * value
    if metric == "pixel_error":
        value = record.get("aAcc")
        return None if value is None else 1.0 - value
    return None


def _fmt(value, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if metric == "pixel_error" else f"{value:.2f}"


def _delta(measured, published, metric: str) -> str:
    if measured is None or published is None:
        return ""
    d = measured - published
    return f"{d:+.4f}" if metric == "pixel_error" else f"{d:+.2f}"


def paper_rows(run: dict) -> list[dict]:
    """The headline row, plus one per other measured metric the paper gives for the same result
    (``paper.also``, e.g. SegNet's global / class accuracy and BF)."""
    rows = [paper_row(run)]
    paper = run["paper"]
    for metric, value in (paper.get("also") or {}).items():
        if metric in PERCENT_METRICS or metric in LOWER_IS_BETTER:
            comp = (paper.get("comparable") or {}).get("also") or {}
            rows.append(paper_row(run, metric, value, comp.get(metric), continuation=True))
    return rows


def paper_row(run: dict, metric: str | None = None, published=None, comp_value=None,
              continuation: bool = False) -> dict:
    paper = run["paper"]
    comparable = paper.get("comparable") or {}
    if metric is None:
        metric = str(paper.get("metric", "mIoU"))
        published = paper.get("value")
        comp_value = comparable.get("value")
    finished = run["status"] == "done"
    record = run["record"]
    measured = measured_value(record, metric) if finished else None
    if finished:
        shown = _fmt(measured, metric)
    elif run["status"] == "not run":
        shown = "not run"
    else:
        iters = f" {run['info'].get('iterations')}/{run['info'].get('max_iters')} it" if run["info"] else ""
        shown = f"{run['status']}{iters}"
    label = " (smoke)" if run["smoke"] else ""
    row = {
        "experiment": "↳ same result" if continuation else (run["experiment"] or run["name"]) + label,
        "metric": metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""),
        "paper": _fmt(published, metric) if published is not None else "—",
        "paper split": paper.get("split", ""),
        "paper protocol": paper.get("protocol", ""),
        "extra data (paper)": paper.get("extra_data", ""),
        "measured": shown + label if finished else shown,
        "measured split": record.get("split", "") if record else "",
        "measured protocol": _protocol(record.get("protocol")) if record else "",
        "Δ": _delta(measured, published, metric) if finished else "",
        "comparable": (f"{_fmt(comp_value, metric)} ({comparable.get('split', '')}; {comparable.get('source', '')})"
                       if comp_value is not None else ""),
        "Δ comparable": _delta(measured, comp_value, metric) if finished else "",
        "run": run["name"],
        "status": run["status"] + label,
    }
    if continuation:  # the conditions are those of the row above
        for key in ("paper split", "paper protocol", "extra data (paper)", "measured split", "measured protocol",
                    "run", "status"):
            row[key] = ""
        row["comparable"] = _fmt(comp_value, metric) if comp_value is not None else ""
    return row


def missing_experiments(runs: list[dict], reason: str = "not run") -> list[dict]:
    """Pseudo-runs for the experiment files that have no run below ``runs=``."""
    from segbench.api import CONF_DIR

    have = {r["experiment"] for r in runs}
    extra = []
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        if path.stem in have:
            continue
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        paper = dict(cfg.get("paper") or {})
        base = path.stem
        for entry in cfg.get("defaults", []) or []:  # variants (e.g. the CRF one) inherit their base's paper block
            if isinstance(entry, str) and not entry.startswith(("_", "/")):
                base_cfg = OmegaConf.to_container(OmegaConf.load(path.parent / f"{entry}.yaml"), resolve=False)
                paper = {**(base_cfg.get("paper") or {}), **paper}
        if not paper:
            continue
        extra.append({"dir": path, "name": "", "record": {}, "info": {}, "config": cfg, "paper": paper,
                      "experiment": base, "smoke": False, "status": "not run", "error": reason})
    return extra


def to_markdown(rows: list[dict], columns=COLUMNS) -> str:
    return markdown_table(columns, rows)


def deviations_section(runs: list[dict]) -> str:
    lines, seen = [], set()
    for run in runs:
        paper = run["paper"] or {}
        key = run["experiment"] or run["name"]
        if key in seen or not (paper.get("deviations") or paper.get("unstated")):
            continue
        seen.add(key)
        lines.append(f"**{key}** — {paper.get('title', '')}; source: {paper.get('source', '')}")
        for item in paper.get("deviations") or []:
            lines.append(f"- deviation: {item}")
        for item in paper.get("unstated") or []:
            lines.append(f"- not stated by the paper: {item}")
        if run.get("smoke"):
            lines.append("- smoke run: tiny widths / ResNet-50 for ResNet-101, 2 iterations, 32x32 crops, "
                         "random init, synthetic fixture data (segbench/sweep.py SMOKE)")
        lines.append("")
    return "\n".join(lines)


def build_report(runs: list[dict], title: str = "segbench report") -> tuple[str, list[dict], list[dict]]:
    """(markdown, runs-table rows, paper-table rows)."""
    real = [r for r in runs if r["status"] != "not run"]
    rows = [run_row(r) for r in real]
    papers = sorted((r for r in runs if r["paper"]), key=lambda r: (r["experiment"] or r["name"], r["name"]))
    paper_table = [row for r in papers for row in paper_rows(r)]
    smoke = any(r["smoke"] for r in real)
    parts = [f"# {title}", ""]
    if smoke:
        parts += ["> **SMOKE RUN** — tiny models, 2 iterations, random initialisation, synthetic fixture data: the "
                  "measured numbers only show that every recipe runs end to end. They say nothing about the papers.", ""]
    parts += ["## Published vs measured", "",
              "Paper = the experiment file's `paper:` block; Δ = measured − paper (in the paper's unit); "
              "comparable = the paper's own ablation without data segbench does not use, or an independent "
              "reproduction. A run that has not finished shows its status, never a number.", ""]
    parts += [to_markdown(paper_table, PAPER_COLUMNS) if paper_table else "(no run carries a `paper:` block)", ""]
    parts += ["## Runs", "", to_markdown(rows), ""]
    deviations = deviations_section(papers)
    if deviations:
        parts += ["## Deviations from the papers", "", deviations]
    return "\n".join(parts).rstrip() + "\n", rows, paper_table


def plot(paper_rows_runs: list[dict], path: Path) -> Path | None:
    """Grouped bars per experiment: published, comparable, measured (percent metrics only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = []
    for run in paper_rows_runs:
        paper = run["paper"]
        metric = str(paper.get("metric", "mIoU"))
        if metric not in PERCENT_METRICS:
            continue
        measured = measured_value(run["record"], metric) if run["status"] == "done" else None
        comparable = (paper.get("comparable") or {}).get("value")
        items.append(((run["experiment"] or run["name"]) + (" (smoke)" if run["smoke"] else ""),
                      paper.get("value"), comparable, measured))
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(items) + 2), 4.5))
    width = 0.27
    xs = range(len(items))
    for k, (label, color) in enumerate((("published", "#4c72b0"), ("comparable", "#dd8452"), ("measured", "#55a868"))):
        values = [item[k + 1] if item[k + 1] is not None else 0.0 for item in items]
        bars = ax.bar([x + (k - 1) * width for x in xs], values, width, label=label, color=color)
        for bar, item in zip(bars, items):
            if item[k + 1] is None:
                bar.set_hatch("//")
                bar.set_alpha(0.2)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([item[0] for item in items], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("% (mIoU unless noted)")
    ax.set_title("published vs measured (hatched = no value / not finished)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(cfg: DictConfig) -> list[dict]:
    runs = collect_runs(Path(cfg.runs))
    if cfg.get("include_missing"):
        reasons = {}
        if cfg.get("missing_reasons"):
            reasons = _read_json(Path(cfg.missing_reasons)) or {}
        extra = missing_experiments(runs)
        for run_ in extra:
            run_["status"] = "not run"
            run_["error"] = reasons.get(run_["experiment"], "")
            if run_["error"]:
                run_["paper"] = {**run_["paper"], "protocol": run_["paper"].get("protocol", "")}
        runs += extra
    if not runs:
        raise SegbenchError(f"no metrics.json found under {cfg.runs}")
    markdown, rows, _ = build_report(runs, str(cfg.get("title") or "segbench report"))
    print(markdown)
    if cfg.get("output"):
        from segbench.io import write_text

        out = Path(cfg.output)
        if out.suffix == ".csv":
            text = csv_table(COLUMNS, rows)
        else:
            text = markdown
            plot_path = Path(cfg.plot) if cfg.get("plot") else out.with_suffix(".png")
            made = plot([r for r in runs if r["paper"]], plot_path)
            if made:
                text += f"\n![published vs measured]({made.name if made.parent == out.parent else made})\n"
                print(f"wrote {made}")
        write_text(out, text)
        print(f"wrote {out}")
    return rows
