#!/usr/bin/env bash
# Two slotbandit binaries (or one binary under two sets of serve flags, or on two stores) side by
# side, alternating run by run: the comparison of a change to the lookup's hot path, or of one
# build on the sample and on a million arms. Each run
# starts a fresh service, drives it at full speed with wrk -t2 (bench/lookup/wrk_decision.lua),
# and reports the decisions/s and the CPU time the service spent per decision (all its threads,
# from /proc; and apart, the share of the propensity thread, which runs in the idle scheduling
# class and so takes only CPU nothing else wanted: a million arms keep it busy, the sample not).
# On a host whose speed drifts, the throughput of two runs a minute apart can differ
# by 10%; the CPU per decision moves far less, so a change of a few percent shows in it first.
#
# Usage: bench/lookup/ab.sh A B
#   A, B: LABEL=BINARY[,serve flags...], e.g.
#     bench/lookup/ab.sh head=/tmp/head/slotbandit new=target/release/slotbandit
#     bench/lookup/ab.sh nice19=$bin,--propensity-nice,19 nice0=$bin,--propensity-nice,0
#   A flag store=DIR (a folder left by bench/scale/run.sh) or store=sample picks that run's store,
#   and targets=uniform|traffic the decisions asked of a bench/scale store (as TARGETS below):
#     bench/lookup/ab.sh sample=$bin,store=sample 1m=$bin,store=$HOME/.cache/slotbandit/bench-scale/…
# env: ROUNDS (default 5); DURATION seconds per run (default 10); CONNECTIONS (default 64);
#      STORE_SCALE=DIR: the store of runs without store= (default: the sample, as
#      bench/lookup/run.sh); TARGETS=uniform|traffic: the decisions asked of a bench/scale store
#      by runs without targets= (bench/lib/http.sh decision_store); SERVE_THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/lib/http.sh
source bench/lib/http.sh
[ $# -eq 2 ] || die "usage: bench/lookup/ab.sh LABEL=BINARY[,FLAG...] LABEL=BINARY[,FLAG...]"
duration="${DURATION:-10}"
conns="${CONNECTIONS:-64}"
rounds="${ROUNDS:-5}"
need wrk "apt-get install wrk"
need curl "apt-get install curl"

declare -A binary flags store targets
labels=()
for spec in "$@"; do
  [[ "$spec" == *=* ]] || die "$spec: expected LABEL=BINARY[,FLAG...]"
  label="${spec%%=*}"
  IFS=, read -r -a parts <<<"${spec#*=}"
  [ -x "${parts[0]}" ] || die "$label: ${parts[0]} is not an executable"
  [ -z "${binary[$label]:-}" ] || die "two runs are labelled $label"
  binary[$label]="${parts[0]}"
  store[$label]="${STORE_SCALE:-sample}"
  targets[$label]="${TARGETS:-uniform}"
  flags[$label]=""
  for flag in "${parts[@]:1}"; do
    case "$flag" in
      store=*) store[$label]="${flag#store=}" ;;
      targets=*) targets[$label]="${flag#targets=}" ;;
      *) flags[$label]+=" $flag" ;;
    esac
  done
  labels+=("$label")
done

work="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

url=http://127.0.0.1:18083
start() { # label -> starts the service of `label` on a fresh log, sets pid and wrk's targets
  rm -rf "$work/log" "$work/spool"
  export SB_TARGETS="${targets_of[$1]}" SB_KEY="${key_of[$1]}"
  # shellcheck disable=SC2086 # the flags are split on purpose
  RUST_LOG=warn "${binary[$1]}" serve --store "embedded:$work/$1/store.redb" --log "file:$work/log" \
    --spool-dir "$work/spool" --listen 127.0.0.1:18083 --threads "${SERVE_THREADS:-2}" \
    ${flags[$1]} >"$work/serve.out" 2>&1 &
  pid=$!
  wait_http "$url/readyz" 600 "$pid" || { cat "$work/serve.out" >&2; exit 1; }
}
stop() {
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
}

declare -A targets_of key_of
for label in "${labels[@]}"; do
  bin="${binary[$label]}"
  mkdir "$work/$label"
  unset SB_TARGETS SB_KEY
  if [ "${store[$label]}" = sample ]; then
    [ "${targets[$label]}" = uniform ] || die "$label: targets= needs a bench/scale store, not the sample"
    decision_store "$work/$label"
    key_of[$label]="$SB_KEY" targets_of[$label]=""
    start "$label"
    import_sample_slot "$url"
    stop
  else
    TARGETS="${targets[$label]}" decision_store "$work/$label" "${store[$label]}"
    key_of[$label]="" targets_of[$label]="$SB_TARGETS"
  fi
done

ticks_per_second="$(getconf CLK_TCK)"
per_decision() { # clock ticks -> µs a decision over the run's $n requests
  awk -v t="$1" -v hz="$ticks_per_second" -v n="$n" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }'
}
raw="$work/runs.tsv"
: >"$raw"
for ((r = 1; r <= rounds; r++)); do
  # Each round swaps who goes first, so neither always runs on a warmer or cooler host.
  order=("${labels[@]}")
  [ $((r % 2)) -eq 0 ] && order=("${labels[1]}" "${labels[0]}")
  for label in "${order[@]}"; do
    start "$label"
    wrk_load "$url" 0 2 >/dev/null
    c0="$(cpu_ticks "$pid")" p0="$(thread_cpu_ticks "$pid" propensities)"
    read -r rps p50 p99 _ errors n < <(wrk_load "$url" 0)
    c1="$(cpu_ticks "$pid")" p1="$(thread_cpu_ticks "$pid" propensities)"
    stop
    [ "$errors" = 0 ] || die "round $r, $label: $errors of $n requests failed"
    cpu_us="$(per_decision $((c1 - c0)))" propensity_us="$(per_decision $((p1 - p0)))"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$label" "$rps" "$cpu_us" "$p50" "$p99" "$propensity_us" >>"$raw"
    echo "round $r: $label $rps decisions/s, $cpu_us µs of CPU a decision" >&2
  done
done

echo
echo "Every run (wrk -t2 -c$conns, $duration s each, a fresh service each):"
echo
echo "| round | run | decisions/s | service CPU µs / decision | of which the propensity thread (idle class) | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|---|"
awk -F'\t' '{ printf "| %s | %s | %.0f | %s | %s | %s | %s |\n", $1, $2, $3, $4, $7, $5, $6 }' "$raw"
echo
a="${labels[0]}"; b="${labels[1]}"
echo "| round | $b / $a decisions/s | $b / $a CPU a decision |"
echo "|---|---|---|"
awk -F'\t' -v a="$a" -v b="$b" '
function median(x, n,   i, j, t) {
  for (i = 2; i <= n; i++) { t = x[i]; for (j = i - 1; j >= 1 && x[j] > t; j--) x[j + 1] = x[j]; x[j + 1] = t }
  return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
}
{ rps[$1, $2] = $3; cpu[$1, $2] = $4; if ($1 > rounds) rounds = $1 }
END {
  for (r = 1; r <= rounds; r++) {
    q = rps[r, b] / rps[r, a]; c = cpu[r, b] / cpu[r, a]
    printf "| %d | %.3f | %.3f |\n", r, q, c
    qs[r] = q; cs[r] = c
  }
  printf "| median | %.3f | %.3f |\n", median(qs, rounds), median(cs, rounds)
}' "$raw"
