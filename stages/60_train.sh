#!/usr/bin/env bash
# Stage 60: train the renderer with render-and-optimize on DeepSpeed (run_dir/train/: checkpoints/, tb/,
# metrics.jsonl, text_tokenizer.json, export/). Config sections: model, train (pipeline/training/train.py).
# Resumes from the latest checkpoint by itself; SIGTERM/SIGINT finish the current batch, save and exit.
#   default:       bash stages/60_train.sh --config C.yaml      (train.nproc_per_node local ranks via torchrun)
#   one node:      LAUNCHER="torchrun --nproc_per_node 8" bash stages/60_train.sh --config C.yaml
#   several nodes: LAUNCHER="deepspeed --hostfile ds_configs/hostfile.example" bash stages/60_train.sh --config C.yaml
#                  (the deepspeed launcher starts every node over ssh), or on each node:
#                  LAUNCHER="torchrun --nnodes 2 --nproc_per_node 8 --node_rank R --rdzv_backend c10d \
#                    --rdzv_endpoint HEAD:29500 --rdzv_id RUN" bash stages/60_train.sh --config C.yaml
# Extra arguments go to pipeline.training.train (e.g. --profile video, --stop-after-steps N, --no-export).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ -z "${LAUNCHER:-}" ]; then
  profile=()
  for ((i = 0; i < ${#STAGE_ARGS[@]}; i++)); do
    [ "${STAGE_ARGS[$i]}" = "--profile" ] && profile=(--profile "${STAGE_ARGS[$((i + 1))]}")
  done
  nproc=$(python -m pipeline.training.train --config "$CONFIG" "${profile[@]}" --print-nproc)
  if [ "$nproc" -gt 1 ]; then
    LAUNCHER="torchrun --standalone --nproc_per_node $nproc"
  fi
fi
launch pipeline.training.train --config "$CONFIG" "${STAGE_ARGS[@]}"
