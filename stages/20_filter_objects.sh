#!/usr/bin/env bash
# Stage 20: Mask R-CNN object filter (LHQ-V) -> run_dir/data/videos/filter_stats.parquet, kept.parquet.
# Config section `filter` (see pipeline/curation/object_filter.py). Without filter.weights every clip is kept,
# marked unfiltered. Re-apply a changed rule without the detector: bash stages/20_filter_objects.sh --config C --retune
# Across GPUs: LAUNCHER="torchrun --nproc_per_node 8" bash stages/20_filter_objects.sh --config C.yaml
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.curation.object_filter --config "$CONFIG" "${STAGE_ARGS[@]}"
