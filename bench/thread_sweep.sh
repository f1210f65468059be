#!/usr/bin/env bash
# Run the mvm benchmarks once per thread setting and print one summary table per setting.
#
#   bench/thread_sweep.sh [OUTDIR] [PYTHON]      (defaults: /tmp/xbar-bench, python on PATH)
#
# Only environment variables change between runs; the library code is the same. Each run is a
# fresh process, because numba, OpenBLAS and OpenMP read these variables once, at start-up.
# Before each run it waits (up to QUIET_WAIT_S, default 120 s) for the CPUs to be >= 80 % idle
# and prints the idle share it saw: other jobs on a small machine skew the numbers. REPEAT=n
# runs every setting n times (files bench-NAME-1.json ...), to tell noise from effect.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/xbar-bench}
PY=${2:-python}
mkdir -p "$OUT"

SETTINGS=(
  "default|"
  "numba1|NUMBA_NUM_THREADS=1"
  "openblas1|OPENBLAS_NUM_THREADS=1"
  "workqueue|NUMBA_THREADING_LAYER=workqueue"
  "omp|NUMBA_THREADING_LAYER=omp"
  "passive|OMP_WAIT_POLICY=passive"
  "workqueue+passive|NUMBA_THREADING_LAYER=workqueue OMP_WAIT_POLICY=passive"
  "omp+passive+openblas1|NUMBA_THREADING_LAYER=omp OMP_WAIT_POLICY=passive OPENBLAS_NUM_THREADS=1"
  # OpenBLAS workers spin (sched_yield) for 2**28 cycles (~0.1 s) after every call unless told
  # otherwise; 2**4 cycles makes them sleep at once and hand the core to numba's threads.
  "blas-timeout4|OPENBLAS_THREAD_TIMEOUT=4"
  "blas-timeout4+passive|OPENBLAS_THREAD_TIMEOUT=4 OMP_WAIT_POLICY=passive"
  # Not threads but the same kind of hidden cost: glibc returns the large per-tile temporaries
  # (M, V: tiles x batch x out float32) to the OS after every call, so every call page-faults
  # them back in (~2 µs per 4 KiB page here). Keeping freed memory in the process avoids that.
  "malloc|MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824"
  "malloc+blas-timeout4+passive|MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 OPENBLAS_THREAD_TIMEOUT=4 OMP_WAIT_POLICY=passive"
)
ONLY=${ONLY:-}   # e.g. ONLY="default passive" to run a subset
REPEAT=${REPEAT:-1}
QUIET_WAIT_S=${QUIET_WAIT_S:-120}

idle_pct() {   # share of CPU time idle over the next second, in percent
  local a b c d e f g h t1 i1 t2 i2
  read -r _ a b c d e f g h _ < /proc/stat; t1=$((a+b+c+d+e+f+g+h)); i1=$((d+e))
  sleep 1
  read -r _ a b c d e f g h _ < /proc/stat; t2=$((a+b+c+d+e+f+g+h)); i2=$((d+e))
  echo $(( 100 * (i2 - i1) / (t2 - t1 > 0 ? t2 - t1 : 1) ))
}

wait_quiet() {
  local waited=0 idle
  idle=$(idle_pct)
  while (( idle < 80 && waited < QUIET_WAIT_S )); do sleep 4; waited=$((waited + 5)); idle=$(idle_pct); done
  echo "$idle"
}

for s in "${SETTINGS[@]}"; do
  name=${s%%|*}; envs=${s#*|}
  if [[ -n "$ONLY" && " $ONLY " != *" $name "* ]]; then continue; fi
  for ((i = 1; i <= REPEAT; i++)); do
    tag=$name; (( REPEAT > 1 )) && tag=$name-$i
    idle=$(wait_quiet)
    echo "## $tag: ${envs:-(no variables set)}   [idle before: ${idle} %, load: $(cut -d' ' -f1-3 /proc/loadavg)]"
    read -r _ a b c d e f g h _ < /proc/stat; busy1=$((a+b+c+f+g+h))
    TIMEFORMAT="%U %S %R"
    { time env $envs "$PY" -m pytest bench/test_mvm.py --benchmark-only -q -p no:cacheprovider \
        --benchmark-json="$OUT/bench-$tag.json" >"$OUT/bench-$tag.log" 2>&1 ; } 2>"$OUT/time-$tag.txt" \
      || { echo "run failed, see $OUT/bench-$tag.log"; continue; }
    read -r _ a b c d e f g h _ < /proc/stat; busy2=$((a+b+c+f+g+h))
    # CPU seconds used by other processes during the run: all busy time minus this run's own.
    read -r u s r < "$OUT/time-$tag.txt"
    tck=$(getconf CLK_TCK)
    echo "(run: ${r} s wall; CPU used by other processes meanwhile: $(awk -v b=$((busy2 - busy1)) -v t="$tck" \
         -v u="$u" -v s="$s" -v r="$r" 'BEGIN { o = b / t - u - s; if (o < 0) o = 0; printf "%.1f s = %.0f %% of one core", o, 100 * o / r }'))"
    "$PY" bench/summarize.py "$OUT/bench-$tag.json"
  done
done
