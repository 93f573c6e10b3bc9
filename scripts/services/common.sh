# shellcheck shell=bash
# Helpers shared by scripts/services/cassandra.sh and kafka.sh (sourced, not run).
#
# The caller sets, before sourcing:
#   SVC        short service name used in messages ("cassandra", "kafka")
# and, before calling the functions that need them:
#   CACHE      per-version cache folder (jars in $CACHE/lib)
#   PIDFILE    pid file of the running JVM
#   PROC_MATCH main class of the JVM, PROC_TAG a text unique to this instance (its config path):
#              both must appear in the JVM's command line (guards against pid reuse)

# shellcheck disable=SC2034 # used by the scripts that source this file
SERVICES_CACHE_ROOT="${SLOTBANDIT_SERVICES_CACHE:-$HOME/.cache/slotbandit-services}"

log() { printf '%s: %s\n' "$SVC" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$SVC" "$*" >&2
  exit 1
}

# pom_property POM NAME -> value of <NAME>...</NAME> in the pom's <properties>
pom_property() {
  local value
  value="$(sed -n "s:.*<$2>\\([^<]*\\)</$2>.*:\\1:p" "$1" | head -n 1)"
  [[ -n "$value" ]] || die "cannot read <$2> from $1"
  printf '%s\n' "$value"
}

# Sets JAVA to the java binary ($JAVA_HOME/bin/java, else java on PATH) and JAVA_MAJOR to its
# feature version; dies unless it is at least $1.
require_java() {
  local min="$1" spec
  if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
    JAVA="${JAVA_HOME}/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA="$(command -v java)"
  else
    die "java not found (need Java $min or newer: install openjdk-$min-jdk-headless or set JAVA_HOME)"
  fi
  spec="$("$JAVA" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^[[:space:]]*java\.specification\.version = //p' | head -n 1)"
  [[ -n "$spec" ]] || die "cannot tell the version of $JAVA"
  spec="${spec#1.}" # 1.8 -> 8
  JAVA_MAJOR="${spec%%.*}"
  if ! [[ "$JAVA_MAJOR" =~ ^[0-9]+$ ]] || ((JAVA_MAJOR < min)); then
    die "$JAVA is Java $spec; Java $min or newer is required (set JAVA_HOME to a JDK $min+)"
  fi
}

# fetch_jars POM VERSION: copies the pom's runtime dependencies into $CACHE/lib, once.
# A marker file ($CACHE/lib/.complete, holding VERSION) records a finished fetch.
fetch_jars() {
  local pom="$1" version="$2" lib="$CACHE/lib" tmp flog start
  if [[ -f "$lib/.complete" && "$(cat "$lib/.complete")" == "$version" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 ||
    die "mvn not found: Maven is needed once to fetch the $SVC $version jars (apt-get install maven)"
  mkdir -p "$CACHE"
  tmp="$CACHE/lib.tmp"
  flog="$CACHE/fetch.log"
  rm -rf "$tmp"
  log "fetching $SVC $version jars from Maven Central into $lib (first run only)..."
  start=$SECONDS
  if ! mvn -B -q -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$flog" 2>&1; then
    tail -n 40 "$flog" >&2 || true
    rm -rf "$tmp"
    die "mvn could not fetch the $SVC jars (full output: $flog)"
  fi
  rm -rf "$lib"
  mv "$tmp" "$lib"
  printf '%s\n' "$version" >"$lib/.complete"
  log "fetched $(find "$lib" -name '*.jar' | wc -l) jars in $((SECONDS - start)) s"
}

# find_jar PATTERN -> path of the one jar in $CACHE/lib matching the glob PATTERN
find_jar() {
  local f
  for f in "$CACHE"/lib/$1; do
    if [[ -f "$f" ]]; then
      printf '%s\n' "$f"
      return 0
    fi
  done
  die "no jar matching $1 in $CACHE/lib (delete $CACHE/lib to fetch again)"
}

# Serialise start/stop/reset of one service (parallel test runners may all call start).
# The lock fd (9) must not leak into the daemon: launch it with 9>&-.
take_lock() {
  mkdir -p "$CACHE"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.lock"
    flock -w 900 9 || die "timed out waiting for the lock $CACHE/.lock"
  fi
}

# port_open HOST PORT: something accepts TCP connections there
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# probe HOST PORT HEX_REQUEST N: sends the request bytes (\xNN escapes), prints the first N
# bytes of the answer as hex pairs separated by spaces ("" when nothing came back in 3 s).
probe() {
  local host="$1" port="$2" request="$3" n="$4"
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "$2" >&3
    timeout 3 head -c "$3" <&3 | od -An -v -tx1 | tr -s " \n" "  "
  ' "$host" "$port" "$request" "$n" 2>/dev/null | sed 's/^ *//; s/ *$//' || true
}

# is_our_jvm PID: the process is alive and its command line holds PROC_MATCH and PROC_TAG
is_our_jvm() {
  local cmd
  kill -0 "$1" 2>/dev/null || return 1
  [[ -r "/proc/$1/cmdline" ]] || return 0 # no procfs: trust the pid file
  cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true)"
  [[ "$cmd" == *"$PROC_MATCH"* && "$cmd" == *"$PROC_TAG"* ]]
}

# pid of our JVM: the one in the pid file if it is alive and ours, else (pid file lost) a
# process whose command line holds PROC_MATCH and PROC_TAG (the config path); fails if none
running_pid() {
  local pid f
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && is_our_jvm "$pid"; then
    printf '%s\n' "$pid"
    return 0
  fi
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}"
    pid="${pid%/cmdline}"
    if [[ "$pid" != "$$" ]] && grep -qF -- "$PROC_TAG" "$f" 2>/dev/null && is_our_jvm "$pid"; then
      printf '%s\n' "$pid"
      return 0
    fi
  done
  return 1
}

# rss_mib PID -> resident memory of the process in MiB ("?" when unknown)
rss_mib() {
  local kb
  kb="$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status" 2>/dev/null || true)"
  if [[ -n "$kb" ]]; then echo "$((kb / 1024))"; else echo "?"; fi
}

# stop_pid PID GRACE_SECONDS: TERM, wait, then KILL (a paused process is resumed first, or the
# TERM would wait for it)
stop_pid() {
  local pid="$1" grace="$2" i
  kill -CONT "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  log "pid $pid still alive after ${grace}s, sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  die "pid $pid did not die after KILL"
}

# wait_port_free HOST SECONDS PORT...
wait_port_free() {
  local host="$1" secs="$2" port i busy
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    busy=0
    for port in "$@"; do
      if port_open "$host" "$port"; then busy=1; fi
    done
    ((busy == 0)) && return 0
    sleep 0.2
  done
  die "ports $* on $host still in use ${secs}s after the stop"
}

# show_log_tail FILE...: last lines of each existing, non-empty file, to stderr
show_log_tail() {
  local f
  for f in "$@"; do
    if [[ -s "$f" ]]; then
      printf -- '----- last lines of %s -----\n' "$f" >&2
      tail -n 40 "$f" >&2
    fi
  done
}

# Waits until the service answers ($READY, a command), started as JVM `pid` at `start` (bash's
# SECONDS), then prints $ENV_LINE on stdout (nothing when it is empty: a cluster's node). Fails with the tail of the logs named in LOGS when
# the JVM exits or TIMEOUT seconds pass. Each service script sets READY, READY_WHAT, NOT_READY,
# ENV_LINE, JVM_NAME, TIMEOUT, TIMEOUT_VAR, READY_POLL, LOGS, PIDFILE and LOGDIR.
wait_ready() {
  local pid="$1" start="$2"
  while :; do
    if "$READY"; then
      log "$READY_WHAT after $((SECONDS - start)) s (pid $pid, RSS $(rss_mib "$pid") MiB)"
      if [[ -n "$ENV_LINE" ]]; then echo "$ENV_LINE"; fi
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log_tail "${LOGS[@]}"
      rm -f "$PIDFILE"
      die "the $JVM_NAME JVM (pid $pid) exited during startup; logs: $LOGDIR"
    fi
    if ((SECONDS - start >= TIMEOUT)); then
      show_log_tail "${LOGS[@]}"
      die "$NOT_READY within ${TIMEOUT}s ($TIMEOUT_VAR); pid $pid left running, logs: $LOGDIR"
    fi
    sleep "$READY_POLL"
  done
}

# ---- clusters (--nodes N) ---------------------------------------------------------------------
# Node I of a cluster listens on $CLUSTER_NET.(I + 1) (127.0.0.2, .3, … by default: Linux routes
# all of 127/8 to lo) with the service's usual ports, and keeps its data in $CLUSTER_ROOT/nodeI.
# The service script sets CLUSTER_ROOT, CLUSTER_NET, CLIENT_PORT and ENV_NAME, and defines:
#   select_node I   sets HOST, DATA and the per-node paths and names (PIDFILE, PROC_TAG, …)
#   node_launch     starts the selected node's JVM unless it runs; returns once the next node may
#                   start (Cassandra: the node has joined and answers CQL)
#   cmd_stop        stops the selected node
#   cluster_settle N (optional) returns once the N started nodes form one cluster
# and READY (a command: the selected node answers its clients).

cluster_host() { printf '%s.%s\n' "$CLUSTER_NET" "$(($1 + 1))"; }

# cluster_contacts N -> host:port of every node, comma-separated
cluster_contacts() {
  local i out=()
  for ((i = 1; i <= $1; i++)); do out+=("$(cluster_host "$i"):$CLIENT_PORT"); done
  (
    IFS=,
    printf '%s\n' "${out[*]}"
  )
}

# The node count a cluster was started with ($CLUSTER_ROOT/nodes), or $1 when given.
cluster_size() {
  local saved
  saved="$(cat "$CLUSTER_ROOT/nodes" 2>/dev/null || true)"
  if [[ -n "${1:-}" ]]; then
    if [[ -n "$saved" && "$saved" != "$1" ]]; then
      die "the cluster in $CLUSTER_ROOT has $saved nodes, not $1 ('reset --nodes $saved' first)"
    fi
    printf '%s\n' "$1"
  elif [[ -n "$saved" ]]; then
    printf '%s\n' "$saved"
  else
    die "no cluster in $CLUSTER_ROOT (start one with 'start --nodes N')"
  fi
}

# node_state -> up, paused, starting or down (of the selected node)
node_state() {
  local pid state
  if pid="$(running_pid)"; then
    state="$(sed -n 's/^[0-9]* ([^)]*) \(.\).*/\1/p' "/proc/$pid/stat" 2>/dev/null || true)"
    if [[ "$state" == T ]]; then
      echo paused
    elif "$READY"; then
      echo up
    else
      echo starting
    fi
  elif "$READY"; then
    echo "up (not started by this script)"
  else
    echo down
  fi
}

# cluster_main COMMAND NODES [NODE]: the cluster commands, the same for each service.
cluster_main() {
  local cmd="$1" n="$2" node="${3:-}" i pid state all_up=0
  if [[ -n "$node" ]] && ! { [[ "$node" =~ ^[1-9][0-9]*$ ]] && ((node <= n)); }; then
    die "node must be 1..$n, got '$node'"
  fi
  case "$cmd" in
  start)
    mkdir -p "$CLUSTER_ROOT"
    echo "$n" >"$CLUSTER_ROOT/nodes"
    for ((i = 1; i <= n; i++)); do
      select_node "$i"
      node_launch >&2
    done
    for ((i = 1; i <= n; i++)); do
      select_node "$i"
      wait_node
    done
    if declare -F cluster_settle >/dev/null; then cluster_settle "$n" >&2; fi
    echo "$ENV_NAME=$(cluster_contacts "$n")"
    ;;
  stop | reset)
    # All at once: a Kafka node stopped after the others has no quorum to leave.
    for ((i = 1; i <= n; i++)); do
      select_node "$i"
      if pid="$(running_pid)"; then kill -CONT "$pid" 2>/dev/null; kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for ((i = n; i >= 1; i--)); do
      select_node "$i"
      cmd_stop >&2
    done
    if [[ "$cmd" == reset ]]; then
      [[ -n "$CLUSTER_ROOT" && "$CLUSTER_ROOT" != "/" ]] || die "refusing to delete '$CLUSTER_ROOT'"
      rm -rf "$CLUSTER_ROOT"
      echo "$SVC: cluster folder $CLUSTER_ROOT deleted"
    else
      echo "$SVC: cluster stopped"
    fi
    ;;
  status)
    for ((i = 1; i <= n; i++)); do
      select_node "$i"
      state="$(node_state)"
      [[ "$state" == up ]] || all_up=1
      if pid="$(running_pid)"; then
        # shellcheck disable=SC2153 # HOST is set by select_node
        echo "node $i $HOST:$CLIENT_PORT $state (pid $pid, RSS $(rss_mib "$pid") MiB)"
      else
        echo "node $i $HOST:$CLIENT_PORT $state"
      fi
    done
    return "$all_up"
    ;;
  start-node)
    select_node "$node"
    node_launch >&2
    wait_node
    echo "$SVC: node $node up on $HOST:$CLIENT_PORT"
    ;;
  stop-node)
    select_node "$node"
    cmd_stop >&2
    echo "$SVC: node $node stopped"
    ;;
  pause-node | resume-node)
    select_node "$node"
    pid="$(running_pid)" || die "node $node is not running"
    if [[ "$cmd" == pause-node ]]; then kill -STOP "$pid"; else kill -CONT "$pid"; fi
    echo "$SVC: node $node (pid $pid) ${cmd%-node}d"
    ;;
  *) usage ;;
  esac
}

# Waits until the selected node answers its clients (wait_ready without the environment line).
wait_node() {
  local pid
  pid="$(running_pid)" || die "node on $HOST is not running (logs: $LOGDIR)"
  ENV_LINE='' wait_ready "$pid" "$SECONDS" >&2
}

# parse_cluster_args ARGS...: takes `--nodes N` out of the arguments. Sets NODES (empty: the
# single node) and ARGS (the rest).
parse_cluster_args() {
  NODES=''
  ARGS=()
  while (($#)); do
    case "$1" in
    --nodes)
      [[ $# -ge 2 && "$2" =~ ^[1-9]$ ]] || die "--nodes takes a count from 1 to 9"
      NODES="$2"
      shift 2
      ;;
    --nodes=*)
      [[ "${1#--nodes=}" =~ ^[1-9]$ ]] || die "--nodes takes a count from 1 to 9"
      NODES="${1#--nodes=}"
      shift
      ;;
    *)
      ARGS+=("$1")
      shift
      ;;
    esac
  done
}

# service_main ARGS...: the actions every service script takes — start|stop|status|reset of the
# one node or (with --nodes N) of a cluster, and start-node|stop-node|pause-node|resume-node I.
# Anything else goes to the script's service_action function, if it defines one, with --nodes
# taken out (NODES holds it); else usage.
service_main() {
  parse_cluster_args "$@"
  set -- "${ARGS[@]}"
  case "$#:${1:-}" in
  1:start | 1:stop | 1:status | 1:reset)
    if [[ -z "$NODES" ]]; then
      "cmd_$1"
    else
      NODES="$(cluster_size "$NODES")"
      cluster_main "$1" "$NODES"
    fi
    ;;
  2:start-node | 2:stop-node | 2:pause-node | 2:resume-node)
    NODES="$(cluster_size "$NODES")"
    cluster_main "$1" "$NODES" "$2"
    ;;
  *)
    if declare -F service_action >/dev/null; then
      service_action "$@"
    else
      usage
    fi
    ;;
  esac
}
