#!/usr/bin/env bash
# Stop what cluster/start-local.sh started.
set -euo pipefail
dir=${DASKGLM_CLUSTER_DIR:-$HOME/.daskglm-cluster}
[ -f "$dir/pids" ] && xargs -r kill < "$dir/pids" || true
rm -f "$dir/pids" "$dir/scheduler.json"
