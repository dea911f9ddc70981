#!/usr/bin/env bash
# A fuzzing campaign of one target: fuzz/campaign.sh TARGET [SECONDS [RUNS [LIBFUZZER_FLAGS...]]] runs
# build-fuzz/bin/TARGET_fuzz until SECONDS (default 1800) or RUNS executions (default 10 million),
# whichever comes first, at the lowest priority (a shared machine's builds go first). The
# corpus it grows stays in WORK/TARGET/corpus, crash inputs in WORK/TARGET/artifacts and the log in
# WORK/TARGET.log, WORK being $GP_FUZZ_WORK (default build-fuzz/campaign); the last lines of the
# log are libFuzzer's final stats (stat::number_of_executed_units, and "cov:" edges).
set -euo pipefail
cd "$(dirname "$0")/.."
. fuzz/targets.sh
t=$1 seconds=${2:-1800} runs=${3:-10000000}
extra="${*:4}"
work=${GP_FUZZ_WORK:-build-fuzz/campaign}/$t
mkdir -p "$work"
# Its own session, whose scheduling group gets nice 19 too: with kernel.sched_autogroup_enabled
# (common on desktops and these build machines), a process's nice orders it only within its
# session, and a plain nice 19 campaign takes a whole core's share from the builds beside it.
setsid -w nice -n 19 bash -c "echo 19 >/proc/self/autogroup 2>/dev/null || true
  . fuzz/targets.sh; gp_fuzz_run $t $work -max_total_time=$seconds -runs=$runs $extra" \
  >"$work.log" 2>&1 || true
grep -E "^#[0-9]+.*(DONE|cov:)" "$work.log" | tail -1
grep -E "stat::|ERROR|SUMMARY|Test unit written" "$work.log" || true
