#!/usr/bin/env bash
# Stage 65: a second renderer for video (paper: e = (1, 1, 3) for video), trained like stage 60 from
# the config's `profiles.video` overlay (its own run_dir, model and train sections). Skipped, saying
# so, when the config has no video profile.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if ! python - "$CONFIG" <<'PY'
import sys, yaml
raw = yaml.safe_load(open(sys.argv[1])) or {}
sys.exit(0 if isinstance((raw.get("profiles") or {}).get("video"), dict) else 1)
PY
then
  echo "stage 65: SKIPPED: the config has no 'profiles: {video: ...}' section, so no video renderer is trained"
  exit 0
fi
exec bash "$STAGES_DIR/60_train.sh" --config "$CONFIG" --profile video "${STAGE_ARGS[@]}"
