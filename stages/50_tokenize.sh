#!/usr/bin/env bash
# Stage 50: encode the image and clip manifests into token sets (run_dir/tokens/{images,videos}/{split}).
# Config sections: vqgan (architecture + weights; default: stage 40's output), tokenize.
# Several ranks: LAUNCHER="torchrun --nproc_per_node 8" bash stages/50_tokenize.sh --config C.yaml
# (each rank writes its own shards; rank 0 merges the index; `--merge-only` merges after separate runs).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.tokens.tokenize --config "$CONFIG" "${STAGE_ARGS[@]}"
