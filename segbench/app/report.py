"""``segbench report``: published vs measured, over many run directories.

Every run directory below ``runs=`` is read through :mod:`segbench.app.aggregate` (its ``run.json``,
nothing else: no checkpoint is opened). From each record the report takes

* the measured numbers: training's latest validation (the published-vs-measured table compares this
  one: the recipe's ``eval_protocol``, which experiment files set to the paper's protocol) and every
  ``segbench eval`` scoring (extra rows of the runs table, never replacing training's), and the
  training summary (iterations, global batch, crop, params, training time, peak memory);
* the recipe and the paper's numbers: the run's config, whose ``paper:`` block comes from the
  experiment file (``conf/experiment/*.yaml``) and nowhere else.

It prints and writes (``output=REPORT.md``) three things: every run with the conditions its number
was measured under; per paper, the published number (metric, split, protocol, extra data, source)
beside the measured one with the difference and the paper's comparable row (its own ablation
without the extra data, or an independent reproduction); the deviations of each recipe. A PNG bar
chart (published / comparable / measured per experiment) goes next to the Markdown file.

A run whose training has not finished (or failed) is shown as such, never as a number. Runs
made with ``smoke=true`` (``make reproduce-smoke``) are labelled "smoke" everywhere.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from segbench.app.smoke import smoke_text
from segbench.app import configs

from segbench.app.aggregate import PERCENT_METRICS, RunRow, duration, number, pct, rows
from segbench.errors import SegbenchError
from segbench.io import read_json, write_text
from segbench.metrics.isbi import METRICS as ISBI_METRICS
from segbench.record import Evaluation
from segbench.tables import csv_table, markdown_table

COLUMNS = ("run", "model", "data", "split", "protocol", "iters", "batch", "crop", "mIoU", "mAcc", "aAcc", "fwIoU",
           "BF", "params_M", "train_time", "peak_mem_GB", "status")
PAPER_COLUMNS = ("experiment", "metric", "paper", "paper split", "paper protocol", "extra data (paper)",
                 "measured", "measured split", "measured protocol", "Δ", "comparable", "Δ comparable", "run", "status")
LOWER_IS_BETTER = ISBI_METRICS  # U-Net's Table 1: the ISBI 2012 errors, fractions


def collect_runs(root: Path) -> list[RunRow]:
    """Every run below ``root``, one row each."""
    root = Path(root)
    if not root.exists():
        raise SegbenchError(f"no runs at {root}; pass runs=<dir holding run directories>")
    return rows(root)


# ---- the runs table ---------------------------------------------------------------------------
def run_rows(run: RunRow) -> list[dict]:
    """The run's row (scored by its training's validation), then one per ``segbench eval`` scoring.

    The published-vs-measured table compares the training's validation only, so a later eval
    under another protocol never replaces it."""
    shown = [run_row(run, run.validation, run.name)]
    for ev in run.evaluations:
        shown.append(run_row(run, ev, f"{run.name} [eval {ev.split}, {ev.protocol_name}, {Path(ev.checkpoint).name}]"))
    return shown


def run_row(run: RunRow, scored: Evaluation | None, name: str) -> dict:
    crop = run.summary.crop_size
    status = ", ".join([run.status] + (["smoke"] if run.smoke else [])
                       + ([f"scored by {scored.source}"] if scored else []))
    if run.error:
        status += f": {run.error}"
    return {
        "run": name,
        "model": run.model_class,
        "data": run.data,
        "split": scored.split if scored else "",
        "protocol": scored.protocol_name if scored else "",
        "iters": run.iters,
        "batch": "" if run.summary.global_batch is None else run.summary.global_batch,
        "crop": "x".join(map(str, crop)) if isinstance(crop, (list, tuple)) else (crop or ""),
        **{k: pct(run.percent(scored, k)) for k in PERCENT_METRICS},
        "params_M": run.params_m,
        "train_time": duration(run.summary.train_time_s),
        "peak_mem_GB": run.peak_mem_gb,
        "status": status,
    }


# ---- published vs measured ----------------------------------------------------------------------
def measured_value(scored: Evaluation | None, metric: str) -> float | None:
    """The run's number in the paper's unit: % for IoU/accuracy/BF; the ISBI 2012 errors as the
    fractions the challenge prints, measured only where the protocol scored them
    (``eval_protocol.isbi_errors``: 1 - aAcc is not the challenge's pixel error)."""
    if scored is None:
        return None
    if metric in LOWER_IS_BETTER:
        return number(scored.scores.get(metric))
    if metric not in PERCENT_METRICS:
        return None
    value = number(scored.scores.get(metric))
    return None if value is None else 100 * value


def _digits(metric: str) -> int:
    """Decimals of a metric as its paper prints it (U-Net: warping 0.0003529, Rand 0.0382)."""
    return 7 if metric == "warping_error" else 4 if metric in LOWER_IS_BETTER else 2


def _fmt(value, metric: str) -> str:
    return "n/a" if value is None else f"{value:.{_digits(metric)}f}"


def _delta(measured, published, metric: str) -> str:
    if measured is None or published is None:
        return ""
    return f"{measured - published:+.{_digits(metric)}f}"


def paper_rows(run: RunRow) -> list[dict]:
    """The headline row, plus one per other measured metric the paper gives for the same result
    (``paper.also``, e.g. SegNet's global / class accuracy and BF)."""
    shown = [paper_row(run)]
    paper = run.paper
    for metric, value in (paper.get("also") or {}).items():
        if metric in PERCENT_METRICS or metric in LOWER_IS_BETTER:
            comp = (paper.get("comparable") or {}).get("also") or {}
            shown.append(paper_row(run, metric, value, comp.get(metric), continuation=True))
    return shown


def paper_row(run: RunRow, metric: str | None = None, published=None, comp_value=None,
              continuation: bool = False) -> dict:
    paper = run.paper
    comparable = paper.get("comparable") or {}
    if metric is None:
        metric = str(paper.get("metric", "mIoU"))
        published = paper.get("value")
        comp_value = comparable.get("value")
    scored = run.validation
    measured = measured_value(scored, metric) if run.done else None
    if run.done:
        shown = _fmt(measured, metric)
    elif run.status == "not run":
        shown = "not run"
    else:
        shown = run.status + (f" {run.iters} it" if run.iters else "")
    label = " (smoke)" if run.smoke else ""
    row = {
        "experiment": "↳ same result" if continuation else (run.experiment or run.name) + label,
        "metric": metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""),
        "paper": _fmt(published, metric) if published is not None else "—",
        "paper split": paper.get("split", ""),
        "paper protocol": paper.get("protocol", ""),
        "extra data (paper)": paper.get("extra_data", ""),
        "measured": shown + label if run.done else shown,
        "measured split": scored.split if scored else "",
        "measured protocol": scored.protocol_name if scored else "",
        "Δ": _delta(measured, published, metric),  # empty unless done: measured is None then
        "comparable": (f"{_fmt(comp_value, metric)} ({comparable.get('split', '')}; {comparable.get('source', '')})"
                       if comp_value is not None else ""),
        "Δ comparable": _delta(measured, comp_value, metric),
        "run": run.name,
        "status": run.status + label,
    }
    if continuation:  # the conditions are those of the row above
        for key in ("paper split", "paper protocol", "extra data (paper)", "measured split", "measured protocol",
                    "run", "status"):
            row[key] = ""
        row["comparable"] = _fmt(comp_value, metric) if comp_value is not None else ""
    return row


def missing_experiments(runs: list[RunRow], reasons: dict | None = None) -> list[RunRow]:
    """``not run`` rows for the experiments with a ``paper:`` block and no run below ``runs=``
    (each composed by Hydra, as ``segbench train experiment=<name>`` would)."""
    have = {r.experiment for r in runs}
    extra = []
    for name in configs.available("experiment"):
        paper = configs.experiment(name).get("paper") if name not in have else None
        if paper:
            extra.append(RunRow(name="", status="not run", error=(reasons or {}).get(name, ""), experiment=name,
                                paper=OmegaConf.to_container(paper, resolve=True)))
    return extra


def deviations_section(runs: list[RunRow]) -> str:
    lines, seen = [], set()
    for run in runs:
        paper = run.paper or {}
        key = run.experiment or run.name
        if key in seen or not (paper.get("deviations") or paper.get("unstated")):
            continue
        seen.add(key)
        lines.append(f"**{key}** — {paper.get('title', '')}; source: {paper.get('source', '')}")
        for item in paper.get("deviations") or []:
            lines.append(f"- deviation: {item}")
        for item in paper.get("unstated") or []:
            lines.append(f"- not stated by the paper: {item}")
        if run.smoke:
            lines.append(f"- smoke run: {smoke_text()} (each model's smoke: block and segbench/app/smoke.py SMOKE)")
        lines.append("")
    return "\n".join(lines)


def build_report(runs: list[RunRow], title: str = "segbench report") -> tuple[str, list[dict], list[dict]]:
    """(markdown, runs-table rows, paper-table rows)."""
    real = [r for r in runs if r.status != "not run"]
    table = [row for r in real for row in run_rows(r)]
    papers = sorted((r for r in runs if r.paper), key=lambda r: (r.experiment or r.name, r.name))
    paper_table = [row for r in papers for row in paper_rows(r)]
    parts = [f"# {title}", ""]
    if any(r.smoke for r in real):
        parts += [f"> **SMOKE RUN** — {smoke_text()}: the measured numbers only show that every recipe runs "
                  "end to end. They say nothing about the papers.", ""]
    parts += ["## Published vs measured", "",
              "Paper = the experiment file's `paper:` block; Δ = measured − paper (in the paper's unit); "
              "comparable = the paper's own ablation without data segbench does not use, or an independent "
              "reproduction. A run that has not finished shows its status, never a number.", ""]
    parts += [markdown_table(PAPER_COLUMNS, paper_table) if paper_table else "(no run carries a `paper:` block)", ""]
    parts += ["## Runs", "", markdown_table(COLUMNS, table), ""]
    deviations = deviations_section(papers)
    if deviations:
        parts += ["## Deviations from the papers", "", deviations]
    return "\n".join(parts).rstrip() + "\n", table, paper_table


def plot(runs: list[RunRow], path: Path) -> Path | None:
    """Grouped bars per experiment: published, comparable, measured (percent metrics only)."""
    import matplotlib  # deferred: only REPORT.png needs it, ~0.5 s to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg")

    items = []
    for run in runs:
        paper = run.paper
        metric = str(paper.get("metric", "mIoU"))
        if metric not in PERCENT_METRICS:
            continue
        measured = run.percent(run.validation, metric)
        comparable = (paper.get("comparable") or {}).get("value")
        items.append(((run.experiment or run.name) + (" (smoke)" if run.smoke else ""),
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
        reasons = read_json(cfg.missing_reasons) if cfg.get("missing_reasons") else {}
        runs += missing_experiments(runs, reasons)
    if not runs:
        raise SegbenchError(f"no run.json found under {cfg.runs}")
    markdown, table, _ = build_report(runs, str(cfg.get("title") or "segbench report"))
    print(markdown)
    if cfg.get("output"):
        out = Path(cfg.output)
        if out.suffix == ".csv":
            text = csv_table(COLUMNS, table)
        else:
            text = markdown
            plot_path = Path(cfg.plot) if cfg.get("plot") else out.with_suffix(".png")
            made = plot([r for r in runs if r.paper], plot_path)
            if made:
                text += f"\n![published vs measured]({made.name if made.parent == out.parent else made})\n"
                print(f"wrote {made}")
        write_text(out, text)
        print(f"wrote {out}")
    return table
