#!/usr/bin/env bash
# Stage 00: make the embedded demo data set (procedural landscapes: images, videos, captions).
# Runs only when the config has a `demo_data` section; real runs leave it out and this stage
# says there is nothing to do.
#   bash stages/00_make_demo_data.sh --config configs/demo.yaml
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.demo_data.make --config "$CONFIG" "${STAGE_ARGS[@]}"
