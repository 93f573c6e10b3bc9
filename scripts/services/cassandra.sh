#!/usr/bin/env bash
# Apache Cassandra 5.0 for local tests, run from the Maven Central jars: one node, or a cluster of
# N nodes on loopback addresses (--nodes N).
#
#   scripts/services/cassandra.sh start    fetch jars (once), start, wait until CQL answers
#   scripts/services/cassandra.sh stop     TERM (then KILL) the node, wait for its ports to free
#   scripts/services/cassandra.sh status   exit 0 when CQL answers on $HOST:$PORT
#   scripts/services/cassandra.sh reset    stop, then delete the data folder
#
# A cluster (node I on 127.0.0.(I + 1), the same ports; nodes start one after another):
#   scripts/services/cassandra.sh start|stop|status|reset --nodes N
#   scripts/services/cassandra.sh start-node|stop-node|pause-node|resume-node I
#
# Environment (defaults in brackets):
#   SLOTBANDIT_SERVICES_CACHE          cache root [$HOME/.cache/slotbandit-services]
#   SLOTBANDIT_CASSANDRA_DATA          data, config and logs [<cache root>/cassandra-<version>/cassandra-data];
#                                      of a cluster: its folder, nodeI in it [<...>/cassandra-cluster]
#   SLOTBANDIT_CASSANDRA_PORT          CQL native port [9042]
#   SLOTBANDIT_CASSANDRA_STORAGE_PORT  internode port [7000]
#   SLOTBANDIT_CASSANDRA_NET           a cluster's first three address bytes [127.0.0]
#   SLOTBANDIT_CASSANDRA_TIMEOUT       seconds to wait for CQL on start [180]
#   SLOTBANDIT_CASSANDRA_HEAP          max heap, -Xmx syntax [1g] (-Xms is 512m, or the max if smaller)
#   JAVA_HOME                          JDK to use (Java 17+), else java on PATH
# See scripts/services/README.md.
set -euo pipefail

SVC=cassandra
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$SCRIPT_DIR/common.sh"

POM="$SCRIPT_DIR/cassandra/pom.xml"
VERSION="$(pom_property "$POM" cassandra.version)"
CACHE="$SERVICES_CACHE_ROOT/cassandra-$VERSION"
PORT="${SLOTBANDIT_CASSANDRA_PORT:-9042}"
STORAGE_PORT="${SLOTBANDIT_CASSANDRA_STORAGE_PORT:-7000}"
TIMEOUT="${SLOTBANDIT_CASSANDRA_TIMEOUT:-180}"
HEAP="${SLOTBANDIT_CASSANDRA_HEAP:-1g}"
PROC_MATCH=org.apache.cassandra.service.CassandraDaemon
JVM_NAME=Cassandra
TIMEOUT_VAR=SLOTBANDIT_CASSANDRA_TIMEOUT
READY=cql_ready
READY_POLL=1
# A cluster's layout (common.sh, "clusters").
CLUSTER_ROOT="${SLOTBANDIT_CASSANDRA_DATA:-$CACHE/cassandra-cluster}"
CLUSTER_NET="${SLOTBANDIT_CASSANDRA_NET:-127.0.0}"
CLIENT_PORT="$PORT"
ENV_NAME=SLOTBANDIT_CASSANDRA
# The one node's; select_node sets a cluster node's.
CLUSTER_NAME=slotbandit-test
SEEDS="127.0.0.1:$STORAGE_PORT"
INITIAL_TOKEN=''

# node_paths HOST DATA: where the node listens and keeps its files, and what names it.
node_paths() {
  HOST="$1"
  DATA="$2"
  CONF="$DATA/conf"
  LOGDIR="$DATA/logs"
  PIDFILE="$DATA/cassandra.pid"
  STDOUT_LOG="$LOGDIR/stdout.log"
  SYSTEM_LOG="$LOGDIR/system.log"
  PROC_TAG="-Dcassandra.config=file://$CONF/cassandra.yaml"
  # What wait_ready (common.sh) checks, prints and names.
  READY_WHAT="CQL answers on $HOST:$PORT"
  NOT_READY="CQL did not answer on $HOST:$PORT"
  ENV_LINE="SLOTBANDIT_CASSANDRA=$HOST:$PORT"
  LOGS=("$STDOUT_LOG" "$SYSTEM_LOG")
}
node_paths 127.0.0.1 "${SLOTBANDIT_CASSANDRA_DATA:-$CACHE/cassandra-data}"

# select_node I: node I of a cluster of $NODES. Every node is a seed (none bootstraps: a test
# cluster starts empty, and a restarted node finds the others whichever is down) and owns an
# even share of the token ring.
select_node() {
  # 2^64 / N without overflowing 64 bits
  # shellcheck disable=SC2017
  local i token=-9223372036854775808 step=$(((1 << 62) / NODES * 4)) hosts=()
  node_paths "$(cluster_host "$1")" "$CLUSTER_ROOT/node$1"
  ENV_LINE=''
  CLUSTER_NAME=slotbandit-cluster
  for ((i = 1; i <= NODES; i++)); do hosts+=("$(cluster_host "$i"):$STORAGE_PORT"); done
  SEEDS="$(
    IFS=,
    echo "${hosts[*]}"
  )"
  for ((i = 1; i < $1; i++)); do token=$((token + step)); done
  INITIAL_TOKEN="$token"
}

# Starts the selected node and waits until it has joined (CQL answers only then).
node_launch() {
  cmd_start
}

# A node answers CQL before gossip has told it of its peers: a keyspace created then misses the
# nodes it does not know yet, and its first writes fail with "keyspace does not exist". A cluster
# start therefore returns once every node has seen every other node come up since its own start.
cluster_settle() {
  local n="$1" i j start=$SECONDS missing
  while :; do
    missing=''
    for ((i = 1; i <= n; i++)); do
      select_node "$i"
      for ((j = 1; j <= n; j++)); do
        ((i != j)) || continue
        peer_up "$(cluster_host "$j")" || missing+=" node $i does not see node $j;"
      done
    done
    if [[ -z "$missing" ]]; then
      log "all $n nodes see each other after $((SECONDS - start)) s"
      return 0
    fi
    if ((SECONDS - start >= TIMEOUT)); then
      die "gossip did not settle within ${TIMEOUT}s ($TIMEOUT_VAR):$missing logs: $CLUSTER_ROOT/node*/logs"
    fi
    sleep 1
  done
}

# peer_up HOST: the selected node's log, since its last start, last says HOST is UP.
peer_up() {
  [[ "$(awk -v peer="/$1:$STORAGE_PORT is now " '
    /Cassandra version:/ { state = "" }
    index($0, peer) && / is now (UP|DOWN)$/ { state = $NF }
    END { print state }' "$SYSTEM_LOG" 2>/dev/null)" == UP ]]
}

usage() {
  cat >&2 <<EOF
usage: $0 start|stop|status|reset [--nodes N]
       $0 start-node|stop-node|pause-node|resume-node I [--nodes N]
EOF
  exit 2
}

# CQL OPTIONS request (protocol v4, stream 1); a live node answers SUPPORTED: 84 00 00 01 06
cql_ready() {
  [[ "$(probe "$HOST" "$PORT" '\x04\x00\x00\x01\x05\x00\x00\x00\x00' 5)" == "84 00 00 01 06" ]]
}

write_config() {
  mkdir -p "$CONF" "$LOGDIR" "$DATA/data" "$DATA/commitlog" "$DATA/saved_caches" "$DATA/hints" \
    "$DATA/cdc_raw" "$DATA/triggers"
  cat >"$CONF/cassandra.yaml" <<EOF
# Generated by scripts/services/cassandra.sh on each start; edits are overwritten.
cluster_name: $CLUSTER_NAME
num_tokens: 1
${INITIAL_TOKEN:+initial_token: $INITIAL_TOKEN
}partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$SEEDS"
listen_address: $HOST
rpc_address: $HOST
storage_port: $STORAGE_PORT
start_native_transport: true
native_transport_port: $PORT
data_file_directories:
  - $DATA/data
commitlog_directory: $DATA/commitlog
saved_caches_directory: $DATA/saved_caches
hints_directory: $DATA/hints
cdc_raw_directory: $DATA/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
# A fresh single-node test cluster: no 4.x nodes to stay compatible with.
storage_compatibility_mode: NONE
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
# Tests create and drop keyspaces often: no snapshot on DROP/TRUNCATE.
auto_snapshot: false
# Small test node.
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
EOF
  cat >"$CONF/logback.xml" <<EOF
<!-- Generated by scripts/services/cassandra.sh on each start; edits are overwritten. -->
<configuration scan="false">
  <shutdownHook class="ch.qos.logback.core.hook.DefaultShutdownHook"/>
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>$SYSTEM_LOG</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>$LOGDIR/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
  </root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
EOF
}

jvm_options() {
  local jamm xms=512m
  jamm="$(find_jar 'jamm-*.jar')"
  # -Xms no larger than -Xmx
  case "$HEAP" in
  [0-9]*[mM]) if ((${HEAP%[mM]} < 512)); then xms="$HEAP"; fi ;;
  esac
  JVM_OPTS=(
    "-Xms$xms" "-Xmx$HEAP" -Xss256k
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
    -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError
    -Djava.net.preferIPv4Stack=true -Djava.awt.headless=true
    # JPMS, from Cassandra 5.0 conf/jvm17-server.options
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    # jamm measures object sizes for memtable accounting
    "-javaagent:$jamm"
    # config, logs, data
    "$PROC_TAG"
    "-Dlogback.configurationFile=file://$CONF/logback.xml"
    "-Dcassandra.logdir=$LOGDIR"
    "-Dcassandra.storagedir=$DATA"
    "-Dcassandra.triggers_dir=$DATA/triggers"
    -Dcassandra-foreground=yes
    # fast start of a single test node
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.unsafesystem=true
  )
}

cmd_status() {
  local pid
  if cql_ready; then
    if pid="$(running_pid)"; then
      echo "cassandra $VERSION: answering CQL on $HOST:$PORT (pid $pid, RSS $(rss_mib "$pid") MiB)"
    else
      echo "cassandra: answering CQL on $HOST:$PORT (not a node of this script with data in $DATA)"
    fi
    return 0
  fi
  if pid="$(running_pid)"; then
    echo "cassandra: pid $pid is running but CQL does not answer on $HOST:$PORT (starting?)"
  else
    echo "cassandra: not running (CQL does not answer on $HOST:$PORT)"
  fi
  return 1
}

cmd_start() {
  local pid start=$SECONDS
  if cql_ready; then
    echo "cassandra: already running, CQL answers on $HOST:$PORT"
    echo "SLOTBANDIT_CASSANDRA=$HOST:$PORT"
    return 0
  fi
  require_java 17
  take_lock
  if pid="$(running_pid)"; then
    log "pid $pid is already starting; waiting for CQL on $HOST:$PORT"
    wait_ready "$pid" "$start"
    return
  fi
  if port_open "$HOST" "$PORT"; then
    die "port $HOST:$PORT is taken by something that does not answer CQL (SLOTBANDIT_CASSANDRA_PORT picks another)"
  fi
  if port_open "$HOST" "$STORAGE_PORT"; then
    die "storage port $HOST:$STORAGE_PORT is already in use (SLOTBANDIT_CASSANDRA_STORAGE_PORT picks another)"
  fi
  if ((JAVA_MAJOR != 17)); then
    log "warning: Cassandra $VERSION supports Java 11 and 17; $JAVA is Java $JAVA_MAJOR"
  fi
  fetch_jars "$POM" "$VERSION"
  write_config
  jvm_options
  : >"$STDOUT_LOG"
  log "starting Cassandra $VERSION (data: $DATA, CQL: $HOST:$PORT)"
  nohup "$JAVA" "${JVM_OPTS[@]}" -cp "$CONF:$CACHE/lib/*" "$PROC_MATCH" \
    >>"$STDOUT_LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"
  wait_ready "$pid" "$start"
}

cmd_stop() {
  local pid
  take_lock
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE"
    if cql_ready; then
      die "CQL answers on $HOST:$PORT but not from a node this script started (data: $DATA); not stopping it"
    fi
    echo "cassandra: not running"
    return 0
  fi
  log "stopping pid $pid"
  stop_pid "$pid" 30
  rm -f "$PIDFILE"
  wait_port_free "$HOST" 30 "$PORT" "$STORAGE_PORT"
  echo "cassandra: stopped"
}

cmd_reset() {
  cmd_stop
  [[ -n "$DATA" && "$DATA" != "/" ]] || die "refusing to delete data folder '$DATA'"
  rm -rf "$DATA"
  echo "cassandra: data folder $DATA deleted"
}

service_main "$@"
