"""Benchmarks that print JSON, one module per subject: `python -m pipeline.bench NAME` (see __main__.py)."""
