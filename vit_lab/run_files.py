"""The names of the files in a run directory, in a module without heavy imports so that compare, the sweeper
and the benchmarks name them the same way as the trainer that writes them (``vit_lab.records``)."""

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.json"
HISTORY = "history.json"
