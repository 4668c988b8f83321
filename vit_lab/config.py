"""Building objects from config nodes, limited to the code this lab trusts."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate

from vit_lab import schema  # noqa: F401 - registers the schemas that the YAML files name, before Hydra composes

# Config-controlled `_target_`s may only name these (Hydra 1.4 asks call sites for an execution whitelist).
TRUSTED_TARGETS = ("vit_lab.*", "torch.optim.*", "torch.nn.*")


def build(node: Any, *args: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` with the lab's whitelist."""
    return instantiate(node, *args, _execution_whitelist_=TRUSTED_TARGETS, **kwargs)
