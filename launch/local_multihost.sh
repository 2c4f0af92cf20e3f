#!/usr/bin/env bash
# N JAX processes on this machine, one system over 127.0.0.1 (gloo CPU collectives).
#
#   launch/local_multihost.sh NUM_PROCESSES DEVICES_PER_PROCESS -- ARGS...
#   e.g. launch/local_multihost.sh 2 2 -- --config=configs/mnist.py:tiny --workdir=/tmp/mh
#
# Each process runs `python -m semantica_jax.main ARGS` with its own process id; process i
# logs to WORKLOG_DIR/process_i.log (default: a temp dir, printed). Exit code: the first
# non-zero exit of any process, else 0. When one process fails (or is killed), the others
# get SIGTERM and, if still alive after STOP_GRACE_S seconds (default 10: a peer waiting in
# a collective for a dead process cannot finish its graceful save), SIGKILL; the launcher
# returns only when every child has ended. SIGINT/SIGTERM to the launcher do the same.
set -euo pipefail
num=${1:?number of processes}; per=${2:?devices per process}; shift 2
[ "${1:-}" = "--" ] && shift
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
port=${PORT:-$(( 20000 + RANDOM % 20000 ))}
logs=${WORKLOG_DIR:-$(mktemp -d)}
echo "coordinator 127.0.0.1:$port, $num processes x $per devices, logs in $logs"
grace=${STOP_GRACE_S:-10}
pids=()
stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((t = 0; t < grace * 10; t++)); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap 'stop_all; exit 130' INT TERM
for ((i = 0; i < num; i++)); do
  SEMANTICA_COORDINATOR=127.0.0.1:$port SEMANTICA_NUM_PROCESSES=$num SEMANTICA_PROCESS_ID=$i \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$per" \
    "$python" -m semantica_jax.main "$@" >"$logs/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for ((i = 0; i < num; i++)); do
  # Whichever process ends first: a failure stops the others (they would wait forever).
  set +e; wait -n; rc=$?; set -e
  if [ "$rc" -ne 0 ]; then
    status=$rc
    stop_all
    break
  fi
done
[ $status -ne 0 ] && tail -n 20 "$logs"/process_*.log >&2
exit $status
