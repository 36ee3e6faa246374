#!/usr/bin/env bash
# Stage 85: the paper's Tables 1-3 (section 4.2) as commands: sample exactly what each table measures
# (sharded over the launcher's ranks, resumable), evaluate it, and write run_dir/protocol/<table>/<table>.md
# and .json with the paper's numbers beside ours. Config section `protocol` (a config without it: nothing
# to do); arguments after --config name tables (table1 table2 table3; default: every configured one).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch pipeline.evaluation.protocol --config "$CONFIG" "${STAGE_ARGS[@]}"
