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

# launch MODULE [args...]: run a pipeline entry point under $LAUNCHER (default: plain python).
launch() {
  local module="$1"; shift
  if [ -n "${LAUNCHER:-}" ]; then
    case "$LAUNCHER" in
      # the deepspeed launcher takes a module as `--module NAME` (it has no -m)
      # shellcheck disable=SC2086
      deepspeed*) $LAUNCHER --module "$module" "$@" ;;
      # shellcheck disable=SC2086
      *) $LAUNCHER -m "$module" "$@" ;;
    esac
  else
    python -m "$module" "$@"
  fi
}
