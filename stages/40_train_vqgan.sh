#!/usr/bin/env bash
# Stage 40: train (or fine-tune) the VQGAN tokenizer on the image manifest.
# Config sections: vqgan (architecture, optional starting weights), train_vqgan (losses, schedule).
# Output: run_dir/vqgan/vqgan.safetensors + vqgan.json (checkpoints/ and tb/ beside them).
# Data parallel: LAUNCHER="torchrun --nproc_per_node 8" bash stages/40_train_vqgan.sh --config C.yaml
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.tokens.train_vqgan --config "$CONFIG" "${STAGE_ARGS[@]}"
