#!/usr/bin/env python
"""The README's recipe table, generated from ``segbench/conf/experiment/*.yaml`` (the files are
the one source of the numbers).

    python scripts/recipe_table.py            # print the table
    python scripts/recipe_table.py --write    # replace it in README.md (between the markers)
    python scripts/recipe_table.py --check    # exit 1 when README.md's table is stale (a test runs this)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START, END = "<!-- recipe-table:start (scripts/recipe_table.py --write) -->", "<!-- recipe-table:end -->"
COLUMNS = ("experiment", "paper", "split", "source", "protocol", "recipe", "comparable",
           "deviations (first; all in the file)")


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ").strip()


def recipe_cell(cfg) -> str:
    """Batch, crop, iterations, optimiser, schedule and the staging/precision facts of a recipe."""
    crop = cfg.data.transforms.train.get("crop_size")
    schedule = cfg.schedule._target_.rsplit(".", 1)[-1]
    if schedule == "poly":
        schedule = "fixed lr" if not cfg.schedule.power else f"poly {cfg.schedule.power:g}"
    elif schedule == "step":
        schedule = f"x{cfg.schedule.gamma:g} every {cfg.schedule.step_size}"
    parts = [f"batch {cfg.data.batch_size}"]
    if crop:
        parts.append(f"crop {crop[0]}x{crop[1]}")
    parts += [f"{cfg.trainer.max_iters / 1000:g}K it",
              f"{cfg.optim._target_.rsplit('.', 1)[-1]} lr {cfg.optim.lr:g} ({schedule})",
              f"momentum {cfg.optim.get('momentum', '-')}", f"wd {cfg.optim.weight_decay:g}"]
    rules = cfg.optim.get("param_rules") or []
    if rules:
        parts.append(f"{len(rules)} lr/decay rule{'s' if len(rules) > 1 else ''}")
    if cfg.get("staged_from"):
        parts.append(f"from the {cfg.staged_from} run")
    if cfg.model.get("at_once"):
        parts.append("at-once skips")
    if cfg.model.get("bn_momentum"):
        parts.append(f"BN momentum {cfg.model.bn_momentum:g}")
    parts.append(str(cfg.trainer.precision))
    return ", ".join(parts)


def row(name: str, cfg) -> list[str]:
    from omegaconf import OmegaConf

    from segbench.engine.protocol import describe

    from segbench.metrics.isbi import METRICS as ISBI_METRICS

    paper = cfg.paper
    value = "— (no paper number)" if paper.value is None else f"{_num(paper.value)} {paper.metric}"
    isbi = [f"{k} {_num(v)}" for k, v in (paper.get("also") or {}).items() if k in ISBI_METRICS]
    if isbi:  # U-Net's Table 1 ranks by all three ISBI 2012 errors
        value += f" ({', '.join(isbi)})"
    comparable = paper.get("comparable")
    comp = f"{_num(comparable.value)} ({comparable.label})" if comparable else "—"
    deviations = list(paper.get("deviations") or [])
    dev = deviations[0] + (f" (+{len(deviations) - 1} more)" if len(deviations) > 1 else "") if deviations else "—"
    return [f"`{name}`", value, paper.split, paper.source,
            describe(OmegaConf.to_container(cfg.eval_protocol, resolve=True)), recipe_cell(cfg), comp, dev]


def table() -> str:
    from segbench.app import configs
    from segbench.tables import markdown_table

    rows = [row(name, configs.experiment(name)) for name in configs.available("experiment")]
    return markdown_table(COLUMNS, rows, fmt=_cell)


def replace_in(text: str, new_table: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{new_table}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    current = table()
    if not (args.write or args.check):
        print(current)
        return 0
    text = args.readme.read_text()
    updated = replace_in(text, current)
    if args.check:
        if updated != text:
            print(f"{args.readme}: the recipe table is stale; run python scripts/recipe_table.py --write",
                  file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
