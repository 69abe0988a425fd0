#!/usr/bin/env bash
# Start a dask scheduler and N workers on this machine, the same commands as on several hosts.
#   cluster/start-local.sh [N_WORKERS] [MEMORY_LIMIT]      (stop with cluster/stop-local.sh)
# Env: DASKGLM_CLUSTER_DIR (logs, pids), DASKGLM_SCHEDULER_PORT (8786), DASKGLM_DASHBOARD (:8787).
# Prints the scheduler address to pass as `daskglm fit --scheduler ADDR` or dg.fit(client=ADDR).
set -euo pipefail
n=${1:-2}
mem=${2:-4GB}
dir=${DASKGLM_CLUSTER_DIR:-$HOME/.daskglm-cluster}
mkdir -p "$dir"
dask scheduler --port "${DASKGLM_SCHEDULER_PORT:-8786}" --dashboard-address "${DASKGLM_DASHBOARD:-:8787}" \
  --scheduler-file "$dir/scheduler.json" \
  > "$dir/scheduler.log" 2>&1 &
echo $! > "$dir/pids"
for _ in $(seq 50); do [ -s "$dir/scheduler.json" ] && break; sleep 0.2; done
for i in $(seq "$n"); do
  dask worker --scheduler-file "$dir/scheduler.json" --nthreads 1 --memory-limit "$mem" \
    > "$dir/worker-$i.log" 2>&1 &
  echo $! >> "$dir/pids"
done
python -c "import json,sys; print(json.load(open(sys.argv[1]))['address'])" "$dir/scheduler.json"
