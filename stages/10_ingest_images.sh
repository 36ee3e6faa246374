#!/usr/bin/env bash
# Stage 10: ingest images (LHQ / LHQ1024 folder, a `datasets` dataset on disk, or a URL list)
# -> run_dir/data/images/manifest.parquet + rejects.parquet (section `ingest_images`, see
# pipeline/curation/ingest_images.py); skipped when the config has no such section.
# Resumable (re-run after a kill redoes only unfinished chunks). Several ranks, each taking every
# WORLD_SIZE-th chunk, rank 0 merging: LAUNCHER="torchrun --nproc_per_node 4" bash stages/10_ingest_images.sh --config C.yaml
# `--merge-only` merges the chunks of separately launched ranks.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.curation.ingest_images --config "$CONFIG" "${STAGE_ARGS[@]}"
