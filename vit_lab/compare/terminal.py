"""The terminal table: tabulate's "simple" layout without its header padding, fitted to the terminal's width."""

from __future__ import annotations

import os
from collections.abc import Sequence

from vit_lab.compare.columns import Column
from vit_lab.compare.runs import RunInfo

_ALIGN = {"left": str.ljust, "right": str.rjust, "center": str.center}


def simple_table(rows: Sequence[Sequence[str]], headers: Sequence[str], aligns: Sequence[str]) -> str:
    """tabulate's "simple" table (two spaces between columns, dashes under multi-line headers) with each column only
    as wide as its widest line; written here because tabulate pads headers by its module-global MIN_PADDING."""
    cells = [[str(c).strip() for c in row] for row in rows]
    head = [h.split("\n") for h in headers]
    widths = [max([len(line) for line in h] + [len(row[i]) for row in cells]) for i, h in enumerate(head)]
    depth = max((len(h) for h in head), default=1)

    def line(parts: Sequence[str]) -> str:
        return "  ".join(_ALIGN[a](p, w) for p, a, w in zip(parts, aligns, widths)).rstrip()

    out = [line([h[i] if i < len(h) else "" for h in head]) for i in range(depth)]
    out.append("  ".join("-" * w for w in widths).rstrip())
    out += [line(row) for row in cells]
    return "\n".join(out)


def terminal_table(runs: Sequence[RunInfo], columns: Sequence[Column], best: RunInfo | None) -> str:
    """The runs as a simple table, with a leading "*" column marking the best run when there is one."""
    lead = [["*" if r is best else ""] for r in runs] if best is not None else [[] for _ in runs]
    rows = [lead[i] + [c.cells[i] for c in columns] for i in range(len(runs))]
    headers = ([""] if best is not None else []) + [c.header for c in columns]
    aligns = (["left"] if best is not None else []) + [c.align for c in columns]
    return simple_table(rows, headers, aligns)


def shorten_path(path: str, width: int) -> str:
    """Drop leading components: outputs/multirun/2026-11-27/10-00-00/3 -> .../10-00-00/3."""
    if len(path) <= width:
        return path
    parts = path.split(os.sep)
    for i in range(1, len(parts)):
        cand = "..." + os.sep + os.sep.join(parts[i:])
        if len(cand) <= width:
            return cand
    return "..." + path[-max(width - 3, 1) :]


def split_header(header: str) -> str:
    """Break a header after the '_' or '.' nearest its middle, so its column can be narrower."""
    cuts = [i + 1 for i, ch in enumerate(header[:-1]) if ch in "_."]
    if not cuts or len(header) < 7:
        return header
    cut = min(cuts, key=lambda i: max(i, len(header) - i))
    return header[:cut] + "\n" + header[cut:]


def common_dir(paths: Sequence[str]) -> str:
    """The folder all paths share, when it is a real one and none of the paths itself."""
    if len(paths) < 2:
        return ""
    try:
        common = os.path.commonpath(paths)
    except ValueError:
        return ""
    return common if common and common not in paths and common not in (".", os.sep) else ""


def fit(
    runs: Sequence[RunInfo], columns: list[Column], best: RunInfo | None, width: int
) -> tuple[list[Column], list[str], str, list[str]]:
    """Make the table fit `width` columns: strip the shared folder, move notes below the table, shorten paths,
    then drop config columns from the right. Returns (columns, dropped keys, stripped folder, notes)."""
    dropped: list[str] = []
    notes: list[str] = []
    stripped = ""
    path_col = next((c for c in columns if c.kind == "path"), None)
    note_col = next((c for c in columns if c.kind == "note"), None)

    def over() -> int:
        table = terminal_table(runs, columns, best)
        return max(len(line) for line in table.split("\n")) - width

    if over() > 0 and path_col is not None:
        stripped = common_dir(path_col.cells)
        if stripped:
            path_col.cells = [os.path.relpath(p, stripped) for p in path_col.cells]
    if over() > 0 and note_col is not None:  # notes go below the table, one per run that has one
        columns.remove(note_col)
        notes = [
            f"{path_col.cells[i] if path_col else runs[i].path}: {cell}"
            for i, cell in enumerate(note_col.cells)
            if cell
        ]
    if over() > 0 and path_col is not None:  # keep at least the last folder name (up to 24 characters)
        tail = max(len(os.path.basename(p)) for p in path_col.cells) + 4
        target = max(min(tail, 24), 12, path_col.width() - over())
        path_col.cells = [shorten_path(p, target) for p in path_col.cells]
    if over() > 0:  # long config headers over two lines: patch_size -> patch_/size
        for c in columns:
            if c.kind in ("config", "choice") and "\n" not in c.header:
                c.header = split_header(c.header)
    while over() > 0:
        removable = [c for c in columns if c.kind in ("config", "choice")]
        if not removable:
            break
        columns.remove(removable[-1])
        dropped.insert(0, removable[-1].key)
    if over() > 0 and path_col is not None:
        path_col.cells = [shorten_path(p, max(8, path_col.width() - over())) for p in path_col.cells]
    return columns, dropped, stripped, notes
