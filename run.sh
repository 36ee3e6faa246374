#!/usr/bin/env bash
# NUWA-Infinity pipeline driver.
#
#   ./run.sh demo                         set up, then every stage on the embedded procedural data (CPU)
#   ./run.sh test [pytest args]           set up, then the test suite
#   ./run.sh stages 30-50 --config C.yaml run the stages numbered 30..50 of stages/ for config C
#   ./run.sh stages all --config C.yaml   every stage
#   ./run.sh protocol table1 --config C.yaml   the paper's Table 1 (or table2, table3; none = every one the
#                                         config's protocol section names): stage 85 for those tables
#   ./run.sh ablate NAME --config C.yaml     the paper's ablation NAME (renderer, size, rpe, transfer, loss_region,
#                                            expansion, render_size, seed, or all): train, measure, tabulate
#   ./run.sh setup                        only create/refresh the venv (.venv in the checkout)
#   ./run.sh gpu-wheels                   put DeepSpeed and what it needs as wheels in .whl/ (for a bare GPU machine)
#   ./run.sh gpu-check [--dir D]          on a GPU machine: tests + benches in one JSON (no venv; docs/gpu_check.md)
#
# A stage range stops at the first stage that does not finish: exit status 75 when that stage stopped
# and can resume (training after SIGTERM), the stage's own status otherwise.
# Set-up is idempotent and cached: the venv is rebuilt only when pyproject.toml changes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"

log() { printf '[run.sh] %s\n' "$*" >&2; }
# The comment block at the top of this file, without its '#'.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

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
  # A SIGTERM / SIGINT for the whole process group also reaches the running stage, which stops
  # cleanly (exit status 75 for training): wait for it and report, rather than die first.
  trap 'log "signal received; waiting for the running stage to stop"' TERM INT
  for script in "$ROOT"/stages/[0-9][0-9]_*.sh; do
    local name num
    name=$(basename "$script")
    num=$((10#${name%%_*}))
    if (( num >= 10#$lo && num <= 10#$hi )); then
      log "stage $name"
      local t0=$SECONDS rc=0
      bash "$script" "$@" || rc=$?
      if (( rc == 75 )); then
        log "stage $name stopped before the end after $((SECONDS - t0)) s (resumable, exit status 75); the later" \
            "stages of $range are not run: run the same command again to continue"
        exit 75
      elif (( rc != 0 )); then
        log "stage $name failed (exit status $rc; its message is above); the later stages of $range are not run"
        exit "$rc"
      fi
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
  gpu-wheels)
    # DeepSpeed is a source distribution only: build its (pure-Python) wheel here, and fetch the few packages it
    # needs that a lent GPU machine's image lacks, for that machine's python (GPU_PYTHON, default 3.12).
    setup
    rm -rf "$ROOT/.whl" && mkdir -p "$ROOT/.whl"
    "$VENV/bin/python" -m pip wheel -q --no-deps -w "$ROOT/.whl" "deepspeed==0.19.8"
    "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
      --python-version "${GPU_PYTHON:-3.12}" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$ROOT/.whl" \
      pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0 \
      typing_extensions==4.16.0
    log "wheels in .whl/ ($(du -sh "$ROOT/.whl" | cut -f1)): $(cd "$ROOT/.whl" && ls | tr '\n' ' ')"
    ;;
  gpu-check)
    # No venv and no set-up: a lent GPU machine's python3 has torch; the check installs .whl/ itself.
    exec "${PYTHON:-python3}" -m pipeline.bench.gpu_check "$@"
    ;;
  protocol)
    setup
    run_stages 85 "$@"
    ;;
  ablate)
    [ $# -ge 1 ] || { log "usage: ./run.sh ablate NAME --config FILE"; exit 2; }
    setup
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    exec "$VENV/bin/python" -m pipeline.ablation.ablate "$@"
    ;;
  help|-h|--help)
    usage ;;
  *) log "unknown command '$cmd'"; usage; exit 2 ;;
esac
