#!/usr/bin/env bash
# Stage 12: a single large image (or a few) as the whole data set (config section `single_image`; a run
# without it skips this stage). Writes run_dir/data/single_image/: the pixels as .npy and manifest.parquet
# with each image's training box and held-out strip. Stage 40 then trains the VQGAN on random crops of it,
# stage 50 tokenises it whole in tiles, stage 60 trains on windows of it (train.windows).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.curation.single_image --config "$CONFIG" "${STAGE_ARGS[@]}"
