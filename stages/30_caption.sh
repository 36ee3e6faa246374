#!/usr/bin/env bash
# Stage 30: one caption per image (a local transformers image-to-text model, or the captions the
# source already had), then the deterministic train/test split written into
# run_dir/data/images/manifest.parquet (section `caption`, see pipeline/curation/caption.py and pipeline/curation/split.py).
# Skipped when the config has neither `ingest_images` nor `caption`.
# Shards by RANK/WORLD_SIZE: LAUNCHER="torchrun --nproc_per_node 8" bash stages/30_caption.sh --config C.yaml
# The split alone: python -m pipeline.curation.split --config C.yaml
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.curation.caption --config "$CONFIG" "${STAGE_ARGS[@]}"
