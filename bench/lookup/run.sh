#!/usr/bin/env bash
# Lookup service throughput and latency side by side, on loopback, driven by wrk -t2 with the
# same Lua script (bench/lookup/wrk_decision.lua):
# - slotbandit serve (release, 2 serving threads, embedded store, file event log, API key
#   checked, request_id signed, impressions logged);
# - python: peer.py, a minimal Thompson-sampling service as a Python shop deploys it: FastAPI on
#   uvicorn[standard] with uvloop and httptools, 2 workers (checked: fails unless every worker
#   runs uvloop and httptools);
# - nginx: 2 worker processes answering every URL with one constant decision body (captured from
#   slotbandit, so the same shape and size): the HTTP ceiling of this box;
# - healthz: the same slotbandit process answering GET /healthz (a constant through the same
#   router, middleware and serving threads): the ceiling of slotbandit's own HTTP stack, so that
#   the decision's own cost (slotbandit / healthz) and the stack's (healthz / nginx) show apart.
# For each, the maximum throughput, then p50/p99 at 80% of it (each connection pauses between
# requests; the pause is calibrated by two 5 s runs). ROUNDS rounds, the order rotated each round;
# every run is listed, then a summary with the ratios slotbandit / python and slotbandit / nginx,
# and the CPU each side (the service's process tree, wrk) spent a request at the maximum, with the
# service CPU a decision may take at 0.7 of nginx.
#
# Usage: bench/lookup/run.sh
# env: DURATION seconds per measured run (default 20); WARMUP seconds (default 5);
#      CONNECTIONS (default 64); ROUNDS (default 3); SERVE_THREADS (default 2);
#      STORE_SCALE=DIR to serve a big store instead of the sample: a folder left by
#      bench/scale/run.sh (its store.redb with every slot imported, targets.tsv, banners), each
#      request then a random (tenant, slot, city) of it; with TARGETS=traffic, a random line of
#      its targets-traffic.tsv (busy cities as often as the history asks for them).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/lib/http.sh
source bench/lib/http.sh
duration="${DURATION:-20}"
conns="${CONNECTIONS:-64}"
rounds="${ROUNDS:-3}"
store_scale="${STORE_SCALE:-}"

need wrk "apt-get install wrk"
need curl "apt-get install curl"
if ! command -v nginx >/dev/null; then
  echo "run.sh: installing nginx (apt-get install nginx)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null \
    || die "nginx is required and apt-get install nginx failed"
fi
need nginx "apt-get install nginx"
bench_venv fastapi uvicorn uvloop httptools
bench_release_build

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The store and what to ask for.
store="embedded:$work/store.redb"
decision_store "$work" "$store_scale"

RUST_LOG=warn "$bin" serve --store "$store" --log "file:$work/log" --spool-dir "$work/spool" \
  --listen 127.0.0.1:18080 --threads "${SERVE_THREADS:-2}" >"$work/serve.out" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:18080/readyz 600 "${pids[-1]}" \
  || { cat "$work/serve.out" >&2; exit 1; }
if [ -z "$store_scale" ]; then
  import_sample_slot http://127.0.0.1:18080
  first_path="/v1/tenants/ajio/slots/hero/decision?city=mumbai"; first_key="$SB_KEY"
else
  read -r first_path first_key <"$work/targets"
fi
# One real decision: it must succeed, and it is nginx's constant body (same shape and size). The
# cache takes up to a refresh to see the imported slot, hence the retries.
for _ in $(seq 50); do
  body="$(curl -sf -H "Authorization: Bearer $first_key" "http://127.0.0.1:18080$first_path")" && break
  sleep 0.2
done
[ -n "${body:-}" ] || die "slotbandit answered no decision for $first_path"
case "$body" in *"'"* | *'$'* | *\\*) die "the decision body has characters nginx's return would mangle: $body" ;; esac

(cd bench/lookup && PEER_BANNERS="$banners" PEER_REQUIRE_FAST=1 exec "$venv/bin/uvicorn" peer:app \
  --host 127.0.0.1 --port 18081 --workers 2 --loop uvloop --http httptools --lifespan on \
  --log-level warning --no-access-log) >"$work/peer.out" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:18081/peerinfo 60 "${pids[-1]}" || { cat "$work/peer.out" >&2; exit 1; }
# Every worker must run uvloop and httptools: ask until both workers have answered.
declare -A peer_workers=()
for _ in $(seq 200); do
  info="$(curl -sf http://127.0.0.1:18081/peerinfo)" || die "peer /peerinfo failed"
  read -r pid loop http < <("$venv/bin/python" -c \
    'import json,sys; d=json.loads(sys.argv[1]); print(d["pid"], d["loop"], ",".join(d["http"]))' "$info")
  [[ "$loop" == uvloop.* && "$http" == httptools ]] \
    || die "the Python peer's worker $pid runs loop $loop and HTTP $http, not uvloop and httptools"
  peer_workers[$pid]="$loop $http"
  [ "${#peer_workers[@]}" -ge 2 ] && break
done
[ "${#peer_workers[@]}" -ge 2 ] || die "only ${#peer_workers[@]} peer worker(s) answered /peerinfo"
echo "python peer: ${#peer_workers[@]} workers, each on $(printf '%s\n' "${peer_workers[@]}" | sort -u)" >&2

# nginx as the current user, everything in the temp folder, no root config.
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes 2;
daemon off;
master_process on;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:18082;
    location / {
      default_type application/json;
      return 200 '$body';
    }
  }
}
EOF
nginx -t -q -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>"$work/nginx/test.out" \
  || { cat "$work/nginx/test.out" >&2; die "nginx rejected its generated config"; }
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx.out" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:18082/healthz 20 "${pids[-1]}" || { cat "$work/nginx.out" >&2; exit 1; }
[ "$(curl -sf "http://127.0.0.1:18082$first_path")" = "$body" ] || die "nginx does not answer the decision body"

declare -A url=([slotbandit]=http://127.0.0.1:18080 [python]=http://127.0.0.1:18081
  [nginx]=http://127.0.0.1:18082 [healthz]=http://127.0.0.1:18080)
# The process whose tree serves each (for the CPU per request: bench/lib/http.sh wrk_load).
declare -A server_pid=([slotbandit]="${pids[0]}" [python]="${pids[1]}" [nginx]="${pids[2]}"
  [healthz]="${pids[0]}")
services=(slotbandit python nginx healthz)
[ "$(curl -sf http://127.0.0.1:18080/healthz)" = '{"status":"ok"}' ] || die "slotbandit /healthz does not answer its constant"
measure() { # service -> max_and_80 of it (healthz: the same Lua script, one path, no targets)
  local cpu_pid="${server_pid[$1]}"
  if [ "$1" = healthz ]; then
    SB_TARGETS="" SB_PATH=/healthz max_and_80 "${url[$1]}"
  else
    max_and_80 "${url[$1]}"
  fi
}
raw="$work/runs.tsv"
: >"$raw"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= rounds; r++)); do
  shift_by=$(((r - 1) % ${#services[@]}))
  order=("${services[@]:$shift_by}" "${services[@]:0:$shift_by}")
  echo "round $r: ${order[*]} (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  for name in "${order[@]}"; do
    before="$(wc -l <"$raw")"
    while read -r asked rps p50 p99 mx errors n cpu wrk_cpu; do
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$name" "$asked" "$rps" "$p50" "$p99" "$mx" "$errors" "$n" "$cpu" "$wrk_cpu" >>"$raw"
    done < <(measure "$name")
    [ "$(wc -l <"$raw")" -eq $((before + 2)) ] || die "round $r: the runs against $name failed"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "Every run (wrk -t2 -c$conns, ${duration} s each):"
echo
echo "| round | service | load | decisions/s | p50 ms | p99 ms | max ms | errors / requests | service CPU µs / request | wrk CPU µs / request |"
echo "|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '{
  load = $3 == "max" ? "max" : sprintf("80%% (%d/s asked)", $3)
  printf "| %s | %s | %s | %.0f | %s | %s | %s | %s / %s | %s | %s |\n", $1, $2, load, $4, $5, $6, $7, $8, $9, $10, $11
}' "$raw"

echo
echo "Summary over $rounds rounds (median, and the range):"
echo
awk -F'\t' -v rounds="$rounds" '
function median(a, n,   i, j, t) {
  for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function med(s, what,   i, a) {
  for (i = 1; i <= cnt[s, what]; i++) a[i] = v[s, what, i]
  return median(a, cnt[s, what])
}
function cell(s, what, fmt,   i, lo, hi) {
  for (i = 1; i <= cnt[s, what]; i++) { if (i == 1 || v[s, what, i] < lo) lo = v[s, what, i]; if (i == 1 || v[s, what, i] > hi) hi = v[s, what, i] }
  return sprintf(fmt " (" fmt "–" fmt ")", med(s, what), lo, hi)
}
{
  if ($3 == "max") { k = "max"; v[$2, k, ++cnt[$2, k]] = $4; bymax[$1, $2] = $4
                     v[$2, "cpu", ++cnt[$2, "cpu"]] = $10; v[$2, "wrk", ++cnt[$2, "wrk"]] = $11
                     v[$2, "both", ++cnt[$2, "both"]] = $10 + $11 }
  else { v[$2, "at80", ++cnt[$2, "at80"]] = $4; v[$2, "p50", ++cnt[$2, "p50"]] = $5; v[$2, "p99", ++cnt[$2, "p99"]] = $6
         v[$2, "share", ++cnt[$2, "share"]] = 100 * $4 / bymax[$1, $2] }
}
END {
  print "| service | max decisions/s | at ~80%: decisions/s | share of max % | p50 ms | p99 ms |"
  print "|---|---|---|---|---|---|"
  split("slotbandit python nginx healthz", names, " ")
  for (i = 1; i <= 4; i++) {
    s = names[i]
    printf "| %s | %s | %s | %s | %s | %s |\n", s, cell(s, "max", "%.0f"), cell(s, "at80", "%.0f"),
      cell(s, "share", "%.0f"), cell(s, "p50", "%.2f"), cell(s, "p99", "%.2f")
  }
  print ""
  print "| ratio of max throughput | median of the rounds | each round |"
  print "|---|---|---|"
  # slotbandit / healthz: what the decision itself costs on top of its HTTP stack; healthz /
  # nginx: the ceiling of that stack on this box.
  split("slotbandit/python slotbandit/nginx slotbandit/healthz healthz/nginx", pairs, " ")
  for (i = 1; i <= 4; i++) {
    split(pairs[i], pq, "/"); list = ""
    for (r = 1; r <= rounds; r++) { q[r] = bymax[r, pq[1]] / bymax[r, pq[2]]; list = list sprintf("%s%.2f", r > 1 ? ", " : "", q[r]) }
    printf "| %s / %s | %.2f× | %s |\n", pq[1], pq[2], median(q, rounds), list
  }
  print ""
  print "CPU per request at the maximum (µs, user + system; median and range over the rounds):"
  print ""
  print "| service | the service | wrk | both |"
  print "|---|---|---|---|"
  for (i = 1; i <= 4; i++) {
    s = names[i]
    printf "| %s | %s | %s | %s |\n", s, cell(s, "cpu", "%.1f"), cell(s, "wrk", "%.1f"), cell(s, "both", "%.1f")
  }
  # Both cores are busy at the maximum, so its rate is about 2 cores / (both sides CPU a request):
  # 0.7 of nginx leaves slotbandit (nginx both) / 0.7 - (wrk against slotbandit) a request.
  printf "\nAt 0.7 of nginx a decision would have %.1f µs of the service CPU (it takes %.1f; its HTTP stack alone, healthz, %.1f).\n",
    med("nginx", "both") / 0.7 - med("slotbandit", "wrk"), med("slotbandit", "cpu"), med("healthz", "cpu")
}' "$raw"
echo
echo "impressions logged by slotbandit: $(curl -s http://127.0.0.1:18080/metrics | awk '/^slotbandit_impressions_logged_total/ { print $2 }')"
