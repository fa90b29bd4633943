"""segbench.tables: the one renderer behind report, sweep, bench and the benchmarks."""
import csv
import io

from segbench import report, sweep, tables
from segbench.app import bench

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


def test_every_verb_renders_through_it():
    assert bench.text_table is tables.text_table
    assert report.markdown_table is tables.markdown_table and sweep.markdown_table is tables.markdown_table
    assert report.csv_table is tables.csv_table and sweep.csv_table is tables.csv_table
