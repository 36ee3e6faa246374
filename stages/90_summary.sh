#!/usr/bin/env bash
# Stage 90: list every output of the run and the headline figures (run_dir/SUMMARY.md).
source "$(dirname "$0")/common.sh" "$@"
python -m pipeline.evaluation.summary --config "$CONFIG" "${STAGE_ARGS[@]}"
