"""Stages 60-65: the renderer trained render-and-optimize (one optimizer step per patch) on DeepSpeed.

Reads: token shards (pipeline.formats.shards), the `model` and `train` sections of the run config,
a DeepSpeed JSON from ds_configs/.
Writes (under run_dir/train/): `checkpoints/` (DeepSpeed's layout + our meta and per-rank RNG state),
`tb/` (tensorboard), `metrics.jsonl`, `text_tokenizer.json`, and `export/` (pipeline.formats.renderer_io),
the one thing later stages read.

Entry point: `train` (stage 60, and 65 with `--profile video`). `settings` is the train section and
what follows from it (DeepSpeed config, schedule, plan); `loop` the patch loop of Algorithm 1; `data`
the global-batch sampler and, for single-image runs, the windows of code canvases (train.windows);
`checkpoint` saving and resuming; `monitor` the logs and MFU; `export` the consolidated weights;
`validate` the teacher-forced held-out bits per token (also used by evaluation).
"""
