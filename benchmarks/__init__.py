"""Rerunnable performance benchmarks for vit_lab (`python -m benchmarks.<name>`); see benchmarks/README.md."""
