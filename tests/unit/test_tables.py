"""segbench.tables: the one renderer behind report, runs, sweep, bench and the benchmarks."""
import csv
import io
import re

from omegaconf import OmegaConf

from segbench import tables
from segbench.app import report, sweep
from segbench.app import runs as runs_module
from segbench.record import RunRecord, SweepJob

COLUMNS = ["model", "mIoU", "note"]
ROWS = [{"model": "fcn8s", "mIoU": 62.2, "note": "a|b\nc"}, ["unet", 9.75, None]]


def test_markdown_escapes_pipes_and_newlines_and_takes_dicts_or_lists():
    text = tables.markdown_table(COLUMNS, ROWS)
    assert text.splitlines() == ["| model | mIoU | note |", "|---|---|---|",
                                 "| fcn8s | 62.2 | a\\|b c |", "| unet | 9.75 | None |"]


def test_csv_round_trips_and_missing_cells_are_empty():
    rows = list(csv.reader(io.StringIO(tables.csv_table(COLUMNS, [{"model": "x"}, *ROWS]))))
    assert rows == [COLUMNS, ["x", "", ""], ["fcn8s", "62.2", "a|b\nc"], ["unet", "9.75", ""]]


def test_text_table_aligns_columns():
    lines = tables.text_table(["setting", "ms"], [["fp32 NCHW", "12.5"], ["bf16", "3.0"]]).splitlines()
    assert lines == ["setting      ms", "---------  ----", "fp32 NCHW  12.5", "bf16        3.0"]


#: An error message a user's run can carry: a pipe and a newline would break a hand-rolled table.
NASTY = "ValueError: a|b\nsecond line"


def markdown_rows(text: str, first: str) -> list[list[str]]:
    """The cells of the Markdown table whose header starts with ``first``, split on unescaped pipes."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return table


def test_every_verb_table_survives_a_pipe_and_a_newline_and_csv_keeps_the_raw_text(tmp_path, capsys):
    """report (Markdown and CSV), sweep (summary.md/.csv) and runs (console) on a failed run whose
    error has a pipe and a newline: every Markdown row keeps the header's column count with the
    cell escaped, the CSVs give the raw text back, and the console table stays aligned."""
    runs = tmp_path / "sweep"
    RunRecord(status="finished", iteration=2, max_iters=2, config={"model": {"_target_": "x.Toy"}},
              sweep=SweepJob(0, ["model=toy", "optim.lr=0.1"])).save(runs / "model=toy,optim.lr=0.1")
    RunRecord(status="failed", error=NASTY, config={"model": {"_target_": "x.Toy"}},
              sweep=SweepJob(1, ["model=toy", "optim.lr=0.2"])).save(runs / "model=toy,optim.lr=0.2")
    escaped = "ValueError: a\\|b second line"

    markdown, _ = sweep.write_summary(runs)
    table = markdown_rows(markdown, "job")
    assert {len(row) for row in table} == {len(table[0])} and len(table) == 4
    assert escaped in markdown
    summary_csv = list(csv.DictReader((runs / "summary.csv").open(newline="")))
    assert [r["error"] for r in summary_csv] == ["", NASTY]

    text, _, _ = report.build_report(report.collect_runs(runs))  # REPORT.md without its plot
    table = markdown_rows(text, "run")
    assert {len(row) for row in table} == {len(table[0])} and escaped in text
    report.run(OmegaConf.create({"runs": str(runs), "output": str(tmp_path / "report.csv"), "title": "t"}))
    rows = list(csv.reader((tmp_path / "report.csv").open(newline="")))
    assert rows[0] == list(report.COLUMNS) and any(NASTY in cell for row in rows[1:] for cell in row)

    capsys.readouterr()
    runs_module.run(OmegaConf.create({"runs": str(runs), "sort": "name"}))
    lines = capsys.readouterr().out.splitlines()[:4]  # header, rule, two runs
    assert lines[1].startswith("---") and len({len(line) for line in lines}) == 1, lines
