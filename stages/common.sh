# Sourced by every stage script: environment, config argument, launcher.
#
# A stage script is usable alone:   bash stages/50_tokenize.sh --config my.yaml
# and under a distributed launcher: LAUNCHER="torchrun --nproc_per_node 8" bash stages/20_filter_objects.sh ...
# (on several nodes, pass torchrun's --nnodes/--node_rank/--rdzv_endpoint in LAUNCHER on each node).
set -euo pipefail
STAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$STAGES_DIR/.." && pwd)
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Progress bars in a log file (not a terminal): one line every 10 s instead of a flood.
if [ ! -t 2 ]; then export TQDM_MININTERVAL="${TQDM_MININTERVAL:-10}"; fi
# DeepSpeed JIT-compiles its C++ ops once; keep them in the checkout so later runs reuse them.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
fi

CONFIG="${CONFIG:-}"
STAGE_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --config=*) CONFIG="${1#--config=}"; shift ;;
    *) STAGE_ARGS+=("$1"); shift ;;
  esac
done
if [ -z "$CONFIG" ]; then
  echo "$(basename "$0"): --config FILE is required" >&2; exit 2
fi
if [ ! -f "$CONFIG" ]; then
  echo "$(basename "$0"): config file not found: $CONFIG" >&2; exit 2
fi

# Every process of this stage ends when this script is gone (pipeline/lifeline.py), even ranks that a
# launcher started in a session of their own.
export NUWA_STAGE_PID="${HOSTNAME:-$(uname -n)}:$$"

# launch MODULE [args...]: run a pipeline entry point under $LAUNCHER (default: plain python).
# Exit status (pipeline/errors.py): 0 done, 1 error (one line says what and where), 2 usage,
# 75 stopped before the end and resumable, 130 interrupted. Ranks under a launcher exit 0 after a
# clean stop (a launcher would call anything else a crash) and report 75 through NUWA_STATUS_FILE.
launch() {
  local module="$1"; shift
  local rc=0
  NUWA_STATUS_FILE=$(mktemp "${TMPDIR:-/tmp}/nuwa-status.XXXXXX")
  export NUWA_STATUS_FILE
  # SIGTERM / SIGINT sent to the stage's process group reach the entry point as well, which stops
  # cleanly (the trainer finishes its batch and saves). Wait for that instead of dying at once: this
  # shell's end would also end the ranks (pipeline/lifeline.py) before their save.
  trap 'echo "$(basename "$0"): signal received; waiting for the stage to stop cleanly" >&2' TERM INT
  if [ -n "${LAUNCHER:-}" ]; then
    case "$LAUNCHER" in
      # the deepspeed launcher takes a module as `--module NAME` (it has no -m)
      # shellcheck disable=SC2086
      deepspeed*) $LAUNCHER --module "$module" "$@" || rc=$? ;;
      # shellcheck disable=SC2086
      *) $LAUNCHER -m "$module" "$@" || rc=$? ;;
    esac
  else
    python -m "$module" "$@" || rc=$?
  fi
  trap - TERM INT
  # A rank that stopped cleanly is resumable whatever the launcher made of the stop (torchrun exits 1
  # when it was signalled itself).
  if [ "$(cat "$NUWA_STATUS_FILE" 2>/dev/null)" = 75 ]; then rc=75; fi
  rm -f "$NUWA_STATUS_FILE"
  unset NUWA_STATUS_FILE
  return "$rc"
}
