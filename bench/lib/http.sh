# Shell functions shared by bench/lookup/run.sh and bench/scale/run.sh (sourced, not run):
# waiting for a service, driving it with wrk and bench/lookup/wrk_decision.lua, and calibrating
# the pause per connection that gives 80% of a service's maximum.
# The caller sets `conns` (wrk connections) and `duration` (seconds per measured run), and may
# export SB_KEY (one API key for every request) or SB_TARGETS (a file of "PATH KEY" lines, one
# request picked at random each time) for the Lua script.
# shellcheck shell=bash

# shellcheck source=bench/lib/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
wrk_lua="$bench_lib_dir/../lookup/wrk_decision.lua"

die() { echo "${0##*/}: $*" >&2; exit 1; }

need() { # command hint: fails loudly when a command is missing
  command -v "$1" >/dev/null || die "$1 is required ($2)"
}

wait_http() { # url seconds [pid] -> waits for a 200; else says why (the url, a dead pid), returns 1
  local url="$1" deadline=$((SECONDS + $2)) pid="${3:-}"
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ]; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "${0##*/}: the process behind $url (pid $pid) exited" >&2; return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "${0##*/}: $url did not answer 200 within $2 s" >&2; return 1
    fi
    sleep 0.02
  done
}

# One wrk run: url delay_ms [seconds] -> "rps p50_ms p99_ms max_ms errors requests".
# A delay of 0 runs as fast as wrk can (the Lua script then defines no delay function).
# With `cpu_pid` set (a process whose tree serves the url), two more fields: the CPU time that
# tree and wrk itself spent per request, in µs (user + system; on loopback each side's system
# time includes some of the other's TCP work, so only their sum is exact).
wrk_load() {
  local out c0=0 c1=0 TIMEFORMAT='WRKCPU %U %S'
  [ -n "${cpu_pid:-}" ] && c0="$(tree_cpu_ticks "$cpu_pid")"
  out="$( { time SB_DELAY_MS="$2" wrk -t2 -c"${conns:?}" -d"${3:-${duration:?}}s" -s "$wrk_lua" "$1"; } 2>&1)" \
    || die "wrk failed against $1: $out"
  [ -n "${cpu_pid:-}" ] && c1="$(tree_cpu_ticks "$cpu_pid")"
  awk -v cpu="${cpu_pid:+1}" -v ticks="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" '
    /^RESULT/ { $1 = ""; sub(/^ /, ""); result = $0; requests = $NF }
    /^WRKCPU/ { wrk = $2 + $3 }
    END {
      if (result == "") exit 1
      if (cpu) result = result sprintf(" %.2f %.2f", ticks / hz / requests * 1e6, wrk / requests * 1e6)
      print result
    }' <<<"$out" || die "wrk printed no RESULT line against $1: $out"
}

tree_cpu_ticks() { # pid -> utime + stime of the process and all its descendants, in clock ticks
  local total=0 p
  for p in $(descendants "$1"); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(cpu_ticks "$p" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

descendants() { # pid -> the pid and every descendant's
  local child
  echo "$1"
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do descendants "$child"; done
}

# The pause per connection that gives `target` requests/s: a closed loop does
# conns / (pause + latency) requests per second, so each 5 s run at a pause estimates the latency
# and corrects the pause; two rounds land within a few percent of the target.
pause_for() { # url target -> delay_ms (fractional)
  local pause rps
  pause="$(awk -v c="$conns" -v t="$2" 'BEGIN { printf "%.3f", c * 1000 / t }')"
  for _ in 1 2; do
    read -r rps _ < <(wrk_load "$1" "$pause" 5)
    pause="$(awk -v c="$conns" -v t="$2" -v p="$pause" -v r="$rps" \
      'BEGIN { d = c * 1000 / t - (c * 1000 / r - p); if (d < 0) d = 0; printf "%.3f", d }')"
  done
  echo "$pause"
}

# The maximum, then about 80% of it: url -> two lines of "rps p50 p99 max errors requests",
# the second prefixed by the rate asked. A warm-up run of WARMUP seconds (default 5) first.
max_and_80() {
  local url="$1" rps rest target
  wrk_load "$url" 0 "${WARMUP:-5}" >/dev/null
  read -r rps rest < <(wrk_load "$url" 0)
  echo "max $rps $rest"
  target="$(awk -v r="$rps" 'BEGIN { printf "%d", r * 0.8 }')"
  echo "$target $(wrk_load "$url" "$(pause_for "$url" "$target")")"
}

# The store decisions are served from, and what to ask for (needs `bin`): with a folder left by
# bench/scale/run.sh (its store.redb with every slot imported, targets.tsv, banners), a copy of
# its store, a serve key per tenant and SB_TARGETS (one "PATH KEY" line per (tenant, slot,
# city)); without, the sample backfilled with its priors and an admin key as SB_KEY (its slot is
# imported through a running service: import_sample_slot). Sets `banners` (a slot's count).
# With a scale_dir, TARGETS picks the decisions asked: uniform (default: every (tenant, slot,
# city) equally likely, targets.tsv) or traffic (as the history's traffic asks, targets-traffic.tsv).
decision_store() { # work_dir [scale_dir] -> work_dir/store.redb; exports SB_TARGETS or SB_KEY
  local work="$1" scale="${2:-}" store="embedded:$1/store.redb" f tenant slot city targets
  if [ -n "$scale" ]; then
    case "${TARGETS:-uniform}" in
      uniform) targets=targets.tsv ;;
      traffic) targets=targets-traffic.tsv ;;
      *) die "TARGETS=${TARGETS}: expected uniform or traffic" ;;
    esac
    for f in store.redb "$targets" banners; do
      [ -f "$scale/$f" ] || die "$scale has no $f (run bench/scale/run.sh first)"
    done
    echo "serving a copy of $scale/store.redb ($(du -h "$scale/store.redb" | cut -f1))" >&2
    cp "$scale/store.redb" "$work/store.redb"
    banners="$(cat "$scale/banners")"
    local -A keys
    while read -r tenant; do
      keys[$tenant]="$(RUST_LOG=warn "$bin" keys add --store "$store" --tenant "$tenant" --role serve 2>/dev/null)"
    done < <(cut -f1 "$scale/$targets" | sort -u)
    while IFS=$'\t' read -r tenant slot city; do
      printf '/v1/tenants/%s/slots/%s/decision?city=%s %s\n' "$tenant" "$slot" "$city" "${keys[$tenant]}"
    done <"$scale/$targets" >"$work/targets"
    export SB_TARGETS="$work/targets"
    echo "$(wc -l <"$work/targets") decisions to ask from $scale/$targets ($(sort -u "$scale/$targets" | wc -l) (tenant, slot, city)) over ${#keys[@]} tenants, $banners banners a slot" >&2
  else
    RUST_LOG=warn "$bin" backfill --input datasets/sample --store "$store" >/dev/null 2>&1
    RUST_LOG=warn "$bin" priors --store "$store" >/dev/null 2>&1
    SB_KEY="$(RUST_LOG=warn "$bin" keys add --store "$store" --tenant ajio --role admin 2>/dev/null)"
    export SB_KEY
    banners=10
  fi
}

import_sample_slot() { # base_url -> imports datasets/slots/ajio_hero.csv with SB_KEY
  curl -sf -X POST -H "Authorization: Bearer $SB_KEY" -H 'content-type: text/csv' \
    --data-binary @datasets/slots/ajio_hero.csv "$1/v1/tenants/ajio/slot-imports" >/dev/null \
    || die "importing datasets/slots/ajio_hero.csv failed"
}

cpu_ticks() { # pid -> utime + stime of the process, in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

thread_cpu_ticks() { # pid name -> utime + stime of the process's threads called `name`, in clock ticks
  local total=0 task
  for task in /proc/"$1"/task/*; do
    [ "$(cat "$task/comm" 2>/dev/null)" = "$2" ] && total=$((total + $(cpu_ticks "${task#/proc/}" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

rss_kib() { # pid -> resident set size in KiB
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}
