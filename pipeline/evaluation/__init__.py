"""Stages 80-90: the paper's metrics on the samples and held-out data, and the run's summary.

Reads: samples (stage 70), the image manifest or clips as the real reference, held-out token shards
(pipeline.formats.shards) with the renderer export, metric weights by path (Inception, CLIP, I3D in
their public formats).
Writes: `eval/metrics.json` (with every weight file's sha256), cached reference statistics under
`eval/cache/`, and `SUMMARY.md`.

Entry points: `evaluate` (stage 80; the metrics themselves in `metrics/`) and `summary` (stage 90).
For single-image runs, `copying` measures how much of a sample repeats the source's codes verbatim (also
the copy_share metric), and `figure` lays a long sample out as rows and full-resolution crops.
Held-out bits per token come from the trainer's own teacher-forced pass, `training.validate`.
"""
