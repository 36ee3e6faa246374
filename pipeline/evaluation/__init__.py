"""Stages 80-90: the paper's metrics on the samples and held-out data, and the run's summary.

Reads: samples (stage 70), the image manifest or clips as the real reference, held-out token shards
(pipeline.formats.shards) with the renderer export, metric weights by path (Inception, CLIP, I3D in
their public formats).
Writes: `eval/metrics.json` (with every weight file's sha256), cached reference statistics under
`eval/cache/`, `protocol/<table>/` (samples, evaluations, `<table>.md` and `.json`), and `SUMMARY.md`.

Entry points: `evaluate` (stage 80; the metrics themselves in `metrics/`), `protocol` (stage 85: the
paper's Tables 1-3, one command each, our numbers beside the paper's in `run_dir/protocol/<table>/`;
the paper's numbers and the table layout in `paper_tables`) and `summary` (stage 90).
Held-out bits per token come from the trainer's own teacher-forced pass, `training.validate`. The
protocol samples what each table measures with the sampling stage's public entry point,
`sampling.sample.run_jobs` (sharding over ranks and resuming come with it); these are the two
imports from another stage family, listed in tests/test_layout.py.
For single-image runs, `copying` measures how much of a sample repeats the source's codes verbatim (also
the copy_share metric), and `figure` lays a long sample out as rows and full-resolution crops.
"""
