"""``segbench sweep``: a grid of training runs (a Hydra multirun of ``conf/sweep.yaml`` = the
train config), then one table over all of them.

    segbench sweep model=fcn8s,pspnet data=camvid,voc optim.lr=0.01,0.02
    segbench sweep experiment=pspnet_r101_voc_aug,deeplabv3_r101_voc_aug hydra/launcher=joblib
    segbench sweep experiment=... hydra/launcher=slurm hydra.launcher.partition=gpu

* Every job is a normal run directory (``<sweep dir>/<what varied>``) trained by the same service
  as ``segbench train`` (:func:`segbench.app.train.train_run`: checks, torchrun for
  ``trainer.devices=N``, the crop warning, ``.hydra/``, the resume command); this module adds only
  the job's bookkeeping: its ``run.json`` (:mod:`segbench.record`) also holds the job's number,
  overrides and attempts.
* A failing job (bad override, missing data, NaN loss, out of memory) is recorded as failed with
  its error and the sweep goes on; ``error.txt`` keeps the traceback. The sweep exits with
  status 1 if any job failed, after writing the table.
* Rerunning the same command with the same ``hydra.sweep.dir`` skips finished jobs (same
  overrides, status ``finished``) and resumes interrupted ones from their ``last.pt``: only what
  is missing is trained.
* At the end, :class:`AggregateCallback` (``hydra.callbacks`` in ``conf/sweep.yaml``) reads every
  job's record (:mod:`segbench.app.aggregate`) and writes ``summary.md`` / ``summary.csv`` /
  ``summary.json`` into the sweep directory: one row per job, the overrides that vary across
  jobs as the first columns, sorted by them.
* ``smoke=true`` shrinks every job to a CPU smoke test (:func:`segbench.app.smoke.smoke_config`, applied
  by the train service): what ``make reproduce-smoke`` runs over every experiment file; its
  ``best.pt`` (the same weights as ``last.pt``) is removed.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from segbench.app.aggregate import PERCENT_METRICS, rows
from segbench.app.overrides import split_override
from segbench.app.train import RanksFailed, train_run
from segbench.engine import distributed
from segbench.errors import Interrupted, SegbenchError
from segbench.io import write_json, write_text
from segbench.record import FILE, RunRecord, SweepJob, edit, error_text
from segbench.tables import csv_table, markdown_cell, markdown_table

SUMMARY = "summary"

# ---- one job ----------------------------------------------------------------------------------
def run(cfg: DictConfig) -> dict:
    """One sweep job (called by Hydra once per point of the grid). Under a launcher that starts
    one process per GPU for each job (``hydra/launcher=slurm_ddp``) every process trains, but only
    rank 0 keeps the job's books: one attempt counted, one error recorded."""
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        previous = RunRecord.load(job_dir) if (job_dir / FILE).is_file() else None
    except SegbenchError as err:
        return _skipped(hydra_cfg.job.num, f"{err}; use a new hydra.sweep.dir")
    if previous and previous.sweep and previous.sweep.overrides != overrides:
        other = " ".join(previous.sweep.overrides)
        return _skipped(hydra_cfg.job.num, f"{job_dir} already holds another job ({other}); the grid changed: "
                                           f"use a new hydra.sweep.dir")
    if previous and previous.status == "finished":
        print(f"segbench sweep: {job_dir.name} already finished, skipped")
        return {"status": "done", "skipped": True}
    if distributed.launch_environment()[0] != 0:  # the same checks, the same decision as rank 0
        return _train_as_another_rank(cfg, hydra_cfg)

    with edit(job_dir) as record:
        attempts = record.sweep.attempts + 1 if record.sweep else 1
        record.sweep = SweepJob(hydra_cfg.job.num, overrides, attempts)
        record.status, record.error = "running", ""
    try:
        train_job(cfg, hydra_cfg)
    except Interrupted:  # SIGINT/SIGTERM/SIGUSR1: last.pt and the record are written; the sweep stops, a rerun resumes
        raise
    except Exception as err:  # noqa: BLE001 -- any failure of one job is recorded, the sweep goes on
        message = error_text(err)
        write_text(job_dir / "error.txt", traceback.format_exc())
        with edit(job_dir) as record:
            if isinstance(err, RanksFailed) and record.status == "failed" and record.error:
                message = record.error  # what rank 0 recorded says more than torchrun's exit status
            record.status, record.error = "failed", message
        print(f"segbench sweep: job {hydra_cfg.job.num} ({' '.join(overrides)}) failed: {message}", file=sys.stderr)
        return {"status": "failed", "error": message}
    return {"status": "done"}


def _train_as_another_rank(cfg: DictConfig, hydra_cfg) -> dict:
    """A job's rank > 0: train with rank 0, which records the job."""
    try:
        train_job(cfg, hydra_cfg)
    except Interrupted:
        raise
    except Exception as err:  # noqa: BLE001 -- rank 0 records the job's failure
        return {"status": "failed", "error": error_text(err)}
    return {"status": "done"}


def _skipped(num: int, message: str) -> dict:
    print(f"segbench sweep: job {num} skipped: {message}", file=sys.stderr)
    return {"status": "failed", "error": message}


def train_job(cfg: DictConfig, hydra_cfg):
    """Train (or continue) the job in its own directory through the train service."""
    validation = train_run(cfg, hydra_cfg, sweep_job=True)
    if cfg.get("smoke"):  # identical to last.pt after two iterations; spare the disk
        (Path(hydra_cfg.runtime.output_dir) / "best.pt").unlink(missing_ok=True)
    return validation


# ---- the table --------------------------------------------------------------------------------
def collect_jobs(sweep_dir: Path) -> list[dict]:
    """One row per job below ``sweep_dir`` (a run whose record names a sweep job)."""
    table = []
    for job in (r for r in rows(sweep_dir) if r.job >= 0):
        row: dict[str, Any] = {
            "job": job.name,
            "num": job.job,
            "overrides": dict(split_override(o) for o in job.overrides),
            "status": job.status,
            "error": job.error,
            "iters": job.iters,
            "params_M": job.params_m,
            "train_time_s": "" if job.summary.train_time_s is None else job.summary.train_time_s,
            "peak_mem_GB": job.peak_mem_gb,
            "protocol": job.validation.protocol_name if job.validation else "",
        }
        for key in PERCENT_METRICS:  # a number only for a finished run, never for an unfinished one
            value = job.percent(job.validation, key)
            row[key] = "" if value is None else round(value, 2)
        table.append(row)
    return table


def varying_keys(rows: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs (or is missing in some), in CLI order."""
    keys: list[str] = []
    for row in rows:
        for key in row["overrides"]:
            if key not in keys:
                keys.append(key)
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]


def table(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Columns and flat rows, sorted by the varying overrides (then job number)."""
    varying = varying_keys(rows)
    metric_cols = [m for m in PERCENT_METRICS if any(row.get(m) != "" for row in rows)] or ["mIoU"]
    columns = ["job", *varying, "status", *metric_cols, "protocol", "iters", "params_M", "train_time_s",
               "peak_mem_GB", "error"]
    flat = []
    for row in sorted(rows, key=lambda r: ([str(r["overrides"].get(k, "")) for k in varying], r["num"])):
        flat.append({**{k: row["overrides"].get(k, "") for k in varying}, **row})
    return columns, flat


def summary_cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else markdown_cell(value)


def write_summary(sweep_dir: Path) -> tuple[str, list[dict]]:
    """Write ``summary.{md,csv,json}`` for the jobs under ``sweep_dir``; returns (markdown, rows)."""
    sweep_dir = Path(sweep_dir)
    rows = collect_jobs(sweep_dir)
    columns, flat = table(rows)
    markdown = markdown_table(columns, flat, summary_cell)
    write_text(sweep_dir / f"{SUMMARY}.md", markdown + "\n")
    write_text(sweep_dir / f"{SUMMARY}.csv", csv_table(columns, flat))
    write_json(sweep_dir / f"{SUMMARY}.json", {"columns": columns, "rows": flat})
    return markdown, flat


class AggregateCallback(Callback):
    """Hydra callback: after the last job, one table over the whole sweep directory."""

    def __init__(self, fail_on_error: bool = True):
        self.fail_on_error = fail_on_error

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        markdown, rows = write_summary(sweep_dir)
        print(markdown)
        print(f"sweep dir: {sweep_dir}  (summary.md / summary.csv / summary.json)")
        bad = [r for r in rows if r["status"] != "done"]
        if bad:
            print(f"segbench sweep: {len(bad)} of {len(rows)} jobs did not finish; rerun the same command with "
                  f"hydra.sweep.dir={sweep_dir} to retry only those", file=sys.stderr)
            if self.fail_on_error:
                sys.exit(1)
