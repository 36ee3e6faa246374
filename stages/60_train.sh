#!/usr/bin/env bash
# Stage 60: train the renderer with render-and-optimize on DeepSpeed (run_dir/train/: checkpoints/, tb/,
# metrics.jsonl, text_tokenizer.json, export/). Config sections: model, train (pipeline/train.py).
# Resumes from the latest checkpoint by itself; SIGTERM/SIGINT finish the current batch, save and exit.
#   one process:   bash stages/60_train.sh --config C.yaml
#   one node:      LAUNCHER="torchrun --nproc_per_node 8" bash stages/60_train.sh --config C.yaml
#   several nodes: LAUNCHER="deepspeed --hostfile ds_configs/hostfile.example" bash stages/60_train.sh --config C.yaml
#                  (the deepspeed launcher starts every node over ssh), or on each node:
#                  LAUNCHER="torchrun --nnodes 2 --nproc_per_node 8 --node_rank R --rdzv_backend c10d \
#                    --rdzv_endpoint HEAD:29500 --rdzv_id RUN" bash stages/60_train.sh --config C.yaml
# Extra arguments go to pipeline.train (e.g. --stop-after-steps N, --no-export).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
case "${LAUNCHER:-}" in
  deepspeed*)
    # The deepspeed launcher takes a module as `--module NAME` (it has no -m).
    # shellcheck disable=SC2086
    $LAUNCHER --module pipeline.train --config "$CONFIG" "${STAGE_ARGS[@]}" ;;
  *)
    launch pipeline.train --config "$CONFIG" "${STAGE_ARGS[@]}" ;;
esac
