#!/usr/bin/env bash
# NUWA-Infinity pipeline driver.
#
#   ./run.sh demo                         set up, then every stage on the embedded procedural data (CPU)
#   ./run.sh test [pytest args]           set up, then the test suite
#   ./run.sh stages 30-50 --config C.yaml run the stages numbered 30..50 of stages/ for config C
#   ./run.sh stages all --config C.yaml   every stage
#   ./run.sh ablate NAME --config C.yaml  the paper's ablation NAME (renderer, size, rpe, transfer, loss_region,
#                                         expansion, render_size, seed, or all): train, measure, tabulate
#   ./run.sh setup                        only create/refresh the venv (.venv in the checkout)
#
# Set-up is idempotent and cached: the venv is rebuilt only when pyproject.toml changes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"

log() { printf '[run.sh] %s\n' "$*" >&2; }

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  # torch 2.14.1 wheels are cached for CPython 3.11 on the project's machines; any >=3.10 works.
  for p in python3.11 python3.12 python3.10 python3; do
    if command -v "$p" >/dev/null 2>&1; then echo "$p"; return; fi
  done
  log "no python3 found"; exit 1
}

setup() {
  local stamp want
  want=$( (cat pyproject.toml; echo "${PYTHON:-}") | sha256sum | cut -c1-16)
  stamp="$VENV/.deps-$want"
  if [ -f "$stamp" ] && [ -x "$VENV/bin/python" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py=$(pick_python)
    log "creating $VENV with $($py --version 2>&1)"
    "$py" -m venv "$VENV"
  fi
  log "installing dependencies (first time takes a few minutes; cached afterwards)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
  rm -f "$VENV"/.deps-*
  touch "$stamp"
  log "set-up done"
}

run_stages() {
  local range="$1"; shift
  local lo hi
  case "$range" in
    all) lo=0; hi=99 ;;
    *-*) lo=${range%-*}; hi=${range#*-} ;;
    *) lo=$range; hi=$range ;;
  esac
  if ! [[ "$lo" =~ ^[0-9]+$ && "$hi" =~ ^[0-9]+$ ]]; then
    log "bad stage range '$range' (use e.g. 30-50, 40 or all)"; exit 2
  fi
  local ran=0
  for script in "$ROOT"/stages/[0-9][0-9]_*.sh; do
    local name num
    name=$(basename "$script")
    num=$((10#${name%%_*}))
    if (( num >= 10#$lo && num <= 10#$hi )); then
      log "stage $name"
      local t0=$SECONDS
      bash "$script" "$@"
      log "stage $name finished in $((SECONDS - t0)) s"
      ran=$((ran + 1))
    fi
  done
  if (( ran == 0 )); then log "no stage in range $range"; exit 2; fi
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  test)
    setup
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  demo)
    setup
    t0=$SECONDS
    run_stages all --config "$ROOT/configs/demo.yaml" "$@"
    log "demo finished in $((SECONDS - t0)) s (set-up excluded); outputs under runs/demo (see runs/demo/SUMMARY.md)"
    ;;
  stages)
    [ $# -ge 1 ] || { log "usage: ./run.sh stages RANGE --config FILE"; exit 2; }
    setup
    range="$1"; shift
    run_stages "$range" "$@"
    ;;
  ablate)
    [ $# -ge 1 ] || { log "usage: ./run.sh ablate NAME --config FILE"; exit 2; }
    setup
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    exec "$VENV/bin/python" -m pipeline.ablation.ablate "$@"
    ;;
  help|-h|--help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) log "unknown command '$cmd'"; sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
