#!/usr/bin/env bash
# Stage 70: sample from the exported renderer: images of any size and direction, extensions,
# image-to-video, batches from prompt files (run_dir/samples/, a <name>.json of settings per output).
# Config sections: sample (jobs), vqgan (weights; default: stage 40's output). Renderer: run_dir/train/export.
# One process (sampling is sequential in patches); `--only NAME ...` runs some of the jobs.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.sampling.sample --config "$CONFIG" "${STAGE_ARGS[@]}"
