"""The terminal table's layout: tabulate's "simple" format with columns only as wide as their widest line."""

from __future__ import annotations

from vit_lab.compare.terminal import simple_table


def test_columns_are_as_wide_as_their_widest_line_with_two_spaces_between():
    text = simple_table([["a", "1"], ["bb", "22.5"]], ["run", "test\nacc"], ["left", "right"])
    assert text.split("\n") == ["run  test", "      acc", "---  ----", "a       1", "bb   22.5"]


def test_cells_are_stripped_lines_end_without_spaces_and_empty_rows_stay():
    text = simple_table([[" x ", ""], ["", ""]], ["*", "note"], ["left", "left"])
    assert text.split("\n") == ["*  note", "-  ----", "x", ""]
