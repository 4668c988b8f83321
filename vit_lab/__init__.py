"""vit_lab: a Hydra-configured experiment lab for Vision Transformers."""

__version__ = "0.1.0"
