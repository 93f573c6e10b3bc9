#!/usr/bin/env bash
# Apache Kafka 4 (KRaft) for local tests, run from the Maven Central jars: one node (broker and
# controller in one JVM), or a cluster of N such nodes on loopback addresses (--nodes N).
#
#   scripts/services/kafka.sh start                   fetch jars (once), format storage (once),
#                                                     start, wait until the broker answers
#   scripts/services/kafka.sh stop                    TERM (then KILL), wait for the ports to free
#   scripts/services/kafka.sh status                  exit 0 when the broker answers on $HOST:$PORT
#   scripts/services/kafka.sh topic NAME PARTITIONS   create the topic if absent (replication 1,
#                                                     of a cluster min(3, N))
#   scripts/services/kafka.sh run-class CLASS ARGS... run a Kafka tool class with the fetched jars,
#       e.g. run-class org.apache.kafka.tools.ConsoleProducer --bootstrap-server 127.0.0.1:9092 --topic t
#   scripts/services/kafka.sh reset                   stop, then delete the data folder
#
# A cluster (node I on 127.0.0.(I + 1), the same ports; each node is a broker and one of the N
# voters of the controller quorum):
#   scripts/services/kafka.sh start|stop|status|reset --nodes N
#   scripts/services/kafka.sh topic NAME PARTITIONS --nodes N
#   scripts/services/kafka.sh start-node|stop-node|pause-node|resume-node I
#
# Environment (defaults in brackets):
#   SLOTBANDIT_SERVICES_CACHE        cache root [$HOME/.cache/slotbandit-services]
#   SLOTBANDIT_KAFKA_DATA            data, config and logs [<cache root>/kafka-<version>/kafka-data];
#                                    of a cluster: its folder, nodeI in it [<...>/kafka-cluster]
#   SLOTBANDIT_KAFKA_PORT            broker (PLAINTEXT) port [9092]
#   SLOTBANDIT_KAFKA_CONTROLLER_PORT KRaft controller port [9093]
#   SLOTBANDIT_KAFKA_NET             a cluster's first three address bytes [127.0.0]
#   SLOTBANDIT_KAFKA_TIMEOUT         seconds to wait for the broker on start [180]
#   SLOTBANDIT_KAFKA_HEAP            broker max heap, -Xmx syntax [1g]
#   SLOTBANDIT_KAFKA_TOOL_HEAP       max heap of run-class/topic tools [512m]
#   JAVA_HOME                        JDK to use (Java 17+), else java on PATH
# See scripts/services/README.md.
set -euo pipefail

SVC=kafka
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$SCRIPT_DIR/common.sh"

POM="$SCRIPT_DIR/kafka/pom.xml"
VERSION="$(pom_property "$POM" kafka.version)"
CACHE="$SERVICES_CACHE_ROOT/kafka-$VERSION"
PORT="${SLOTBANDIT_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${SLOTBANDIT_KAFKA_CONTROLLER_PORT:-9093}"
TIMEOUT="${SLOTBANDIT_KAFKA_TIMEOUT:-180}"
HEAP="${SLOTBANDIT_KAFKA_HEAP:-1g}"
TOOL_HEAP="${SLOTBANDIT_KAFKA_TOOL_HEAP:-512m}"
PROC_MATCH=kafka.Kafka
JVM_NAME=Kafka
TIMEOUT_VAR=SLOTBANDIT_KAFKA_TIMEOUT
READY=broker_ready
READY_POLL=0.5
# A cluster's layout (common.sh, "clusters").
CLUSTER_ROOT="${SLOTBANDIT_KAFKA_DATA:-$CACHE/kafka-cluster}"
CLUSTER_NET="${SLOTBANDIT_KAFKA_NET:-127.0.0}"
CLIENT_PORT="$PORT"
ENV_NAME=SLOTBANDIT_KAFKA
# The one node's; select_node sets a cluster node's.
NODE_ID=1
QUORUM="controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT"
REPLICATION=1
MIN_ISR=1

# node_paths HOST DATA: where the node listens and keeps its files, and what names it.
node_paths() {
  HOST="$1"
  DATA="$2"
  CONF="$DATA/conf"
  LOGDIR="$DATA/logs"
  KRAFT_DIR="$DATA/kraft-logs"
  PIDFILE="$DATA/kafka.pid"
  STDOUT_LOG="$LOGDIR/stdout.log"
  SERVER_LOG="$LOGDIR/server.log"
  PROC_TAG="$CONF/server.properties"
  BOOTSTRAP="$HOST:$PORT"
  # What wait_ready (common.sh) checks, prints and names.
  READY_WHAT="broker answers on $BOOTSTRAP"
  NOT_READY="the broker did not answer on $BOOTSTRAP"
  ENV_LINE="SLOTBANDIT_KAFKA=$BOOTSTRAP"
  LOGS=("$STDOUT_LOG" "$SERVER_LOG")
}
node_paths 127.0.0.1 "${SLOTBANDIT_KAFKA_DATA:-$CACHE/kafka-data}"

# select_node I: node I of a cluster of $NODES, a static quorum of N voters. Internal topics get
# replication min(3, N), and acks=all writes need 2 in-sync replicas when there are 3.
select_node() {
  local i voters=()
  node_paths "$(cluster_host "$1")" "$CLUSTER_ROOT/node$1"
  ENV_LINE=''
  NODE_ID="$1"
  for ((i = 1; i <= NODES; i++)); do voters+=("$i@$(cluster_host "$i"):$CONTROLLER_PORT"); done
  QUORUM="controller.quorum.voters=$(
    IFS=,
    echo "${voters[*]}"
  )"
  REPLICATION=$((NODES < 3 ? NODES : 3))
  MIN_ISR=$((REPLICATION > 1 ? 2 : 1))
  BOOTSTRAP="$(cluster_contacts "$NODES")"
}

# Starts the selected node's JVM unless it runs, and returns once its controller listens: a
# broker answers only when a quorum of controllers has formed, so the nodes cannot wait for
# each other's brokers one after another.
node_launch() {
  local i
  broker_ready && return 0
  launch
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    port_open "$HOST" "$CONTROLLER_PORT" && return 0
    pid_alive_or_die
    sleep 0.2
  done
  die "the controller of $HOST did not listen on port $CONTROLLER_PORT within ${TIMEOUT}s (logs: $LOGDIR)"
}

pid_alive_or_die() {
  running_pid >/dev/null && return 0
  show_log_tail "${LOGS[@]}"
  die "the Kafka JVM on $HOST exited during startup; logs: $LOGDIR"
}

usage() {
  cat >&2 <<EOF
usage: $0 start|stop|status|reset [--nodes N]
       $0 topic NAME PARTITIONS [--nodes N]
       $0 start-node|stop-node|pause-node|resume-node I [--nodes N]
       $0 run-class CLASS [ARGS...]
EOF
  exit 2
}

# ApiVersions request v0 (api key 18, correlation id 1, null client id). A live broker answers
# with: 4-byte size, correlation id 00 00 00 01, error code 00 00.
broker_ready() {
  local answer
  answer="$(probe "$HOST" "$PORT" '\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\xff\xff' 10)"
  [[ "${answer:12}" == "00 00 00 01 00 00" ]]
}

write_config() {
  mkdir -p "$CONF" "$LOGDIR" "$KRAFT_DIR"
  cat >"$CONF/server.properties" <<EOF
# Generated by scripts/services/kafka.sh on each start; edits are overwritten.
process.roles=broker,controller
node.id=$NODE_ID
$QUORUM
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KRAFT_DIR
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=$REPLICATION
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$MIN_ISR
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$REPLICATION
share.coordinator.state.topic.min.isr=$MIN_ISR
${NODES:+default.replication.factor=$REPLICATION
min.insync.replicas=$MIN_ISR
}group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
  cat >"$CONF/log4j2.properties" <<EOF
# Generated by scripts/services/kafka.sh on each start; edits are overwritten.
status = warn
name = slotbandit-kafka-broker
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $SERVER_LOG
appender.file.filePattern = $SERVER_LOG.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.network.name = kafka.network.RequestChannel\$
logger.network.level = warn
EOF
  write_tools_log_config
}

# Tools (run-class, topic) log WARN and above to stderr, like Kafka's tools-log4j2 config.
write_tools_log_config() {
  mkdir -p "$CONF"
  cat >"$CONF/tools-log4j2.properties" <<EOF
# Generated by scripts/services/kafka.sh; edits are overwritten.
status = warn
name = slotbandit-kafka-tools
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
EOF
}

# Format the KRaft storage once: a standalone controller quorum of this one node, or a node of a
# cluster's static quorum (all its nodes share one cluster id).
format_storage() {
  local formatted="controller=$HOST:$CONTROLLER_PORT" cluster_id flog="$LOGDIR/format.log"
  local quorum=(--standalone)
  if [[ -n "$NODES" ]]; then
    formatted="$QUORUM"
    quorum=()
  fi
  if [[ -f "$KRAFT_DIR/meta.properties" ]]; then
    if [[ -f "$DATA/formatted-with" && "$(cat "$DATA/formatted-with")" != "$formatted" ]]; then
      die "storage in $KRAFT_DIR was formatted with $(cat "$DATA/formatted-with"), now $formatted: run '$0 reset' after changing SLOTBANDIT_KAFKA_CONTROLLER_PORT"
    fi
    return 0
  fi
  if [[ -n "$NODES" && -f "$CLUSTER_ROOT/cluster-id" ]]; then
    cluster_id="$(cat "$CLUSTER_ROOT/cluster-id")"
  else
    cluster_id="$("$JAVA" -cp "$CACHE/lib/*" "-Dlog4j2.configurationFile=$CONF/tools-log4j2.properties" \
      kafka.tools.StorageTool random-uuid 2>>"$flog" | tail -n 1)"
  fi
  [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || {
    show_log_tail "$flog"
    die "StorageTool random-uuid gave no cluster id"
  }
  log "formatting KRaft storage in $KRAFT_DIR (cluster id $cluster_id)"
  if ! "$JAVA" -cp "$CACHE/lib/*" "-Dlog4j2.configurationFile=$CONF/tools-log4j2.properties" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$CONF/server.properties" "${quorum[@]}" \
    >>"$flog" 2>&1; then
    show_log_tail "$flog"
    die "formatting the KRaft storage failed"
  fi
  printf '%s\n' "$formatted" >"$DATA/formatted-with"
  if [[ -n "$NODES" ]]; then printf '%s\n' "$cluster_id" >"$CLUSTER_ROOT/cluster-id"; fi
}

cmd_status() {
  local pid
  if broker_ready; then
    if pid="$(running_pid)"; then
      echo "kafka $VERSION: broker answers on $BOOTSTRAP (pid $pid, RSS $(rss_mib "$pid") MiB)"
    else
      echo "kafka: broker answers on $BOOTSTRAP (not a node of this script with data in $DATA)"
    fi
    return 0
  fi
  if pid="$(running_pid)"; then
    echo "kafka: pid $pid is running but the broker does not answer on $BOOTSTRAP (starting?)"
  else
    echo "kafka: not running (no broker answers on $BOOTSTRAP)"
  fi
  return 1
}

cmd_start() {
  local pid start=$SECONDS
  if broker_ready; then
    echo "kafka: already running, broker answers on $BOOTSTRAP"
    echo "SLOTBANDIT_KAFKA=$BOOTSTRAP"
    return 0
  fi
  if pid="$(running_pid)"; then
    log "pid $pid is already starting; waiting for the broker on $BOOTSTRAP"
    wait_ready "$pid" "$start"
    return
  fi
  launch
  wait_ready "$(cat "$PIDFILE")" "$start"
}

# Launches the node's JVM (unless it is already starting) and writes its pid file.
launch() {
  local pid p
  require_java 17
  take_lock
  if running_pid >/dev/null; then
    return 0
  fi
  for p in "$PORT" "$CONTROLLER_PORT"; do
    if port_open "$HOST" "$p"; then
      die "port $HOST:$p is taken by something that is not this script's broker (SLOTBANDIT_KAFKA_PORT / SLOTBANDIT_KAFKA_CONTROLLER_PORT pick others)"
    fi
  done
  fetch_jars "$POM" "$VERSION"
  write_config
  format_storage
  : >"$STDOUT_LOG"
  log "starting Kafka $VERSION (data: $DATA, broker: $HOST:$PORT, controller: $HOST:$CONTROLLER_PORT)"
  nohup "$JAVA" -Xms256m "-Xmx$HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$CONF/log4j2.properties" "-Dkafka.logs.dir=$LOGDIR" \
    -cp "$CACHE/lib/*" "$PROC_MATCH" "$PROC_TAG" \
    >>"$STDOUT_LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"
}

cmd_stop() {
  local pid
  take_lock
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE"
    if broker_ready; then
      die "a broker answers on $BOOTSTRAP but it is not one this script started (data: $DATA); not stopping it"
    fi
    echo "kafka: not running"
    return 0
  fi
  log "stopping pid $pid"
  stop_pid "$pid" 30
  rm -f "$PIDFILE"
  wait_port_free "$HOST" 30 "$PORT" "$CONTROLLER_PORT"
  echo "kafka: stopped"
}

cmd_reset() {
  cmd_stop
  [[ -n "$DATA" && "$DATA" != "/" ]] || die "refusing to delete data folder '$DATA'"
  rm -rf "$DATA"
  echo "kafka: data folder $DATA deleted"
}

# run_tool CLASS ARGS...: a Kafka tool with the fetched jars, WARN logs to stderr
run_tool() {
  "$JAVA" "-Xmx$TOOL_HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$CONF/tools-log4j2.properties" -cp "$CACHE/lib/*" "$@"
}

prepare_tools() {
  require_java 17
  if [[ ! -f "$CACHE/lib/.complete" ]]; then
    take_lock
    fetch_jars "$POM" "$VERSION"
    exec 9>&-
  fi
  [[ -f "$CONF/tools-log4j2.properties" ]] || write_tools_log_config
}

cmd_run_class() {
  [[ $# -ge 1 ]] || usage
  prepare_tools
  exec "$JAVA" "-Xmx$TOOL_HEAP" -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$CONF/tools-log4j2.properties" -cp "$CACHE/lib/*" "$@"
}

cmd_topic() {
  local name="$1" partitions="$2" out count attempt
  [[ "$name" =~ ^[A-Za-z0-9._-]{1,249}$ ]] || die "invalid topic name '$name'"
  [[ "$partitions" =~ ^[1-9][0-9]*$ ]] || die "PARTITIONS must be a positive integer, got '$partitions'"
  prepare_tools
  if [[ -n "$NODES" ]]; then
    local i
    for ((i = 1; i <= NODES; i++)); do
      select_node "$i"
      broker_ready && break
    done
  fi
  broker_ready || die "no broker answers on $BOOTSTRAP (run '$0 start' first)"
  # a broker that just started may still be fenced for a moment: retry a few times
  for attempt in 1 2 3 4 5; do
    if out="$(run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
      --create --if-not-exists --topic "$name" --partitions "$partitions" \
      --replication-factor "$REPLICATION" 2>&1)"; then
      break
    fi
    ((attempt < 5)) || {
      printf '%s\n' "$out" >&2
      die "could not create topic '$name'"
    }
    sleep 2
  done
  if [[ "$out" == *"Created topic"* ]]; then
    echo "kafka: created topic $name with $partitions partitions"
    return 0
  fi
  out="$(run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
    --describe --topic "$name" 2>&1)" || {
    printf '%s\n' "$out" >&2
    die "could not describe topic '$name'"
  }
  count="$(printf '%s\n' "$out" | sed -n 's/.*PartitionCount:[[:space:]]*\([0-9]*\).*/\1/p' | head -n 1)"
  if [[ "$count" != "$partitions" ]]; then
    die "topic $name already exists with ${count:-?} partitions, not $partitions (delete it or 'reset')"
  fi
  echo "kafka: topic $name already exists with $partitions partitions"
}

[[ $# -ge 1 ]] || usage
if [[ "$1" == run-class ]]; then
  shift
  cmd_run_class "$@"
fi
# kafka.sh's own action: topic NAME PARTITIONS [--nodes N].
service_action() {
  [[ "$#:${1:-}" == 3:topic ]] || usage
  if [[ -n "$NODES" ]]; then NODES="$(cluster_size "$NODES")"; fi
  cmd_topic "$2" "$3"
}

service_main "$@"
