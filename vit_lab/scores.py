"""A classifier's scores on a labelled split: the confusion matrix, per-class precision and recall, its mistakes."""

from __future__ import annotations

from typing import Any

import torch


def scores(labels: torch.Tensor, preds: torch.Tensor, k: int) -> dict[str, Any]:
    """Confusion matrix (rows: true class, columns: predicted) and per-class support, precision and recall."""
    cm = torch.bincount(labels * k + preds, minlength=k * k).reshape(k, k)
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    per_class = [
        {
            "class": c,
            "support": int(support[c]),
            "accuracy": ratio(int(tp[c]), int(support[c])),
            "precision": ratio(int(tp[c]), int(predicted[c])),
            "recall": ratio(int(tp[c]), int(support[c])),
        }
        for c in range(k)
    ]
    wrong = (preds != labels).nonzero().flatten()
    return {
        "confusion": cm.tolist(),
        "per_class": per_class,
        "misclassified": wrong.tolist(),
        "misclassified_as": preds[wrong].tolist(),
    }


def confused_pairs(doc: dict, top: int = 5) -> list[tuple[int, int, int]]:
    """The most frequent (true, predicted, count) mistakes."""
    cm = doc["confusion"]
    pairs = [(t, p, cm[t][p]) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t][p]]
    return sorted(pairs, key=lambda x: -x[2])[:top]
