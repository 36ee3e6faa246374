#!/usr/bin/env bash
# Stage 15: ingest videos (LHQ-V) -> run_dir/data/videos/clips/, clips.parquet, rejects.parquet.
# Config section `ingest_videos` (see pipeline/curation/ingest_videos.py); skipped when the config has none.
# Shards by RANK/WORLD_SIZE: LAUNCHER="torchrun --nproc_per_node 8" bash stages/15_ingest_videos.sh --config C.yaml
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.curation.ingest_videos --config "$CONFIG" "${STAGE_ARGS[@]}"
