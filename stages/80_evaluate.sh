#!/usr/bin/env bash
# Stage 80: Block-FID, Inception Score, CLIP-SIM and FVD of the generated samples
# (section `evaluate`), written to run_dir/eval/metrics.json.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.evaluation.evaluate --config "$CONFIG" "${STAGE_ARGS[@]}"
