"""Compare run directories: find, rank, diff and plot runs (``python -m vit_lab.compare``).

    python -m vit_lab.compare                          # every run under outputs/
    python -m vit_lab.compare --sort test_acc --top 10 --where model.patch_size=4
    python -m vit_lab.compare diff RUN_A RUN_B
    python -m vit_lab.compare --plot curves.png

Modules: ``runs`` (discovery, loading, status), ``metrics`` (the metric registry and key lookup), ``query``
(--where, --sort, --top), ``columns`` (differing keys, --columns), ``formats`` (cells), ``terminal`` (the table
fitted to a width), ``render`` (table, markdown, csv, json), ``diff``, ``stats`` (--group-by), ``plots``,
``sweeps`` (Optuna study summaries) and ``seed_comparison`` (the seed's step 3).
Nothing here imports torch, so the tool starts quickly.
"""

from vit_lab.compare.runs import RunInfo, discover, load_run

__all__ = ["RunInfo", "discover", "load_run"]
