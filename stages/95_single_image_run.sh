#!/usr/bin/env bash
# Stage 95: a second, single-image run after this one, when the config names it (top-level key
# `single_image_run: FILE`, relative to the config's folder; absent or null: skipped). configs/demo.yaml can
# add the one-image continuation (configs/single_image.yaml) to `./run.sh demo` this way (off by default);
# every stage of that config runs into its own run_dir, reusing what it finished before, like any run.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NEXT=$(python - "$CONFIG" <<'PY'
import sys
from pathlib import Path
import yaml
raw = yaml.safe_load(open(sys.argv[1])) or {}
value = raw.get("single_image_run")
if value:
    path = Path(value) if Path(value).is_absolute() else Path(sys.argv[1]).resolve().parent / value
    print(path)
PY
)
if [ -z "$NEXT" ]; then
  echo "stage 95: SKIPPED: the config sets no 'single_image_run', so no single-image run follows"
  exit 0
fi
if [ ! -f "$NEXT" ]; then
  echo "stage 95: error: single_image_run: config file not found: $NEXT" >&2
  exit 1
fi
echo "stage 95: the single-image run of $NEXT"
bash "$ROOT/run.sh" stages all --config "$NEXT"
