#!/usr/bin/env bash
# services.sh — meterray's local services, without Docker or systemd:
#   PostgreSQL (Debian's binaries), Apache Kafka (KRaft single node, jars from
#   Maven Central via scripts/kafka/pom.xml, run by the system JDK), Mosquitto.
#
#   scripts/services.sh up|down|status [postgres|kafka|mosquitto ...]   (no names = all)
#
# State lives under METERRAY_VAR_DIR, by default <repo>/var/ (data, log/*.log, run/*.pid, generated
# configs) — the same variable and default as meterray's `var_dir` setting.
# Ports (all bound to 127.0.0.1) come from meterray's settings, the one source of truth
# (`meterray settings --shell`, so METERRAY_PG_PORT moves the server and the DSN together):
# METERRAY_PG_PORT=5432, METERRAY_KAFKA_PORT=9092, METERRAY_KAFKA_CONTROLLER_PORT=9093,
# METERRAY_MQTT_PORT=1883. Needs the virtualenv (make install), or METERRAY_PYTHON=<python>.
# `up` leaves alone anything already answering on a port (ours or an external server),
# and waits until each service really works. `down` stops only what this script started.
# Install the system packages first: scripts/system-deps.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR=${METERRAY_VAR_DIR:-$ROOT/var}
LOGDIR=$VAR/log
RUNDIR=$VAR/run

HOST=127.0.0.1

PG_TIMEOUT=${METERRAY_PG_TIMEOUT:-60}
KAFKA_TIMEOUT=${METERRAY_KAFKA_TIMEOUT:-120}
MQTT_TIMEOUT=${METERRAY_MQTT_TIMEOUT:-20}

KAFKA_POM=$ROOT/scripts/kafka/pom.xml
KAFKA_DIR=$VAR/kafka
KAFKA_LIBS=$KAFKA_DIR/libs
MQTT_DIR=$VAR/mosquitto
PYTHON=${METERRAY_PYTHON:-$ROOT/.venv/bin/python}

ALL_SERVICES=(postgres kafka mosquitto)

# ---------------------------------------------------------------- helpers

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
elapsed() { local ms=$(($(now_ms) - $1)); printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100)); }
is_root() { [[ $(id -u) -eq 0 ]]; }

port_open() { timeout 2 bash -c ">/dev/tcp/$HOST/$1" 2>/dev/null; }

# already_up NAME PROC PORT: true (and says so) when our NAME runs or someone else's server answers on PORT.
already_up() {
  local pid
  pid=$(pid_of "$1" "$2")
  if [[ -n $pid ]]; then
    log "$1: already running (pid $pid, port $3)"
    return 0
  fi
  if port_open "$3"; then
    log "$1: $HOST:$3 already answers (not ours); leaving it alone"
    return 0
  fi
  return 1
}

pidfile() { echo "$RUNDIR/$1.pid"; }

# pid_of NAME PROC: the pid in var/run/NAME.pid if that process is alive and its
# command line mentions PROC (guards against a recycled pid); empty otherwise.
pid_of() {
  local f pid
  f=$(pidfile "$1")
  [[ -s $f ]] || return 0
  pid=$(head -n1 "$f" | tr -dc 0-9)
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" && echo "$pid"
  return 0
}

# wait_exit PID TIMEOUT: true once the process is gone.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# stop_pid NAME PROC TIMEOUT: SIGTERM, wait, SIGKILL as a last resort.
stop_pid() {
  local name=$1 pid
  pid=$(pid_of "$1" "$2")
  if [[ -z $pid ]]; then
    log "$name: nothing to stop (no live pid file of ours)"
    rm -f "$(pidfile "$name")"
    return 0
  fi
  log "$name: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_exit "$pid" "$3"; then
    log "$name: still alive after $3 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit "$pid" 10 || die "$name: pid $pid does not exit"
  fi
  rm -f "$(pidfile "$name")"
  log "$name: stopped"
}

status_line() { # NAME PROC PORT
  local pid
  pid=$(pid_of "$1" "$2")
  if [[ -n $pid ]]; then
    if port_open "$3"; then printf '%-10s running   pid %s, %s:%s\n' "$1" "$pid" "$HOST" "$3"
    else printf '%-10s starting  pid %s, %s:%s not answering yet\n' "$1" "$pid" "$HOST" "$3"; fi
  elif port_open "$3"; then printf '%-10s external  %s:%s answers, not started by this script\n' "$1" "$HOST" "$3"
  else printf '%-10s stopped\n' "$1"; fi
}

# fail_with_log NAME LOGFILE MESSAGE
fail_with_log() {
  printf '[services] ERROR: %s: %s\n' "$1" "$3" >&2
  if [[ -f $2 ]]; then
    printf '[services] last lines of %s:\n' "$2" >&2
    tail -n 15 "$2" | sed 's/^/    /' >&2
    local cause
    cause=$(tail -n 300 "$2" | grep -E 'FATAL|ERROR|Caused by|Error:' | tail -n 1 || true)
    [[ -z $cause ]] || printf '[services] likely cause: %s\n' "$cause" >&2
  fi
  exit 1
}

# load_ports: PG_PORT, KAFKA_PORT, KAFKA_CONTROLLER_PORT, MQTT_PORT from meterray's settings.
load_ports() {
  local out
  [[ -x $PYTHON ]] || die "no Python at $PYTHON: run make install first (or set METERRAY_PYTHON)"
  out=$(cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m meterray.app.cli \
        settings --shell pg_port kafka_port kafka_controller_port mqtt_port) \
    || die "meterray's settings are invalid (see above); fix the METERRAY_* variable it names"
  local METERRAY_PG_PORT METERRAY_KAFKA_PORT METERRAY_KAFKA_CONTROLLER_PORT METERRAY_MQTT_PORT
  eval "$out"
  PG_PORT=$METERRAY_PG_PORT
  KAFKA_PORT=$METERRAY_KAFKA_PORT
  KAFKA_CONTROLLER_PORT=$METERRAY_KAFKA_CONTROLLER_PORT
  MQTT_PORT=$METERRAY_MQTT_PORT
}

# ---------------------------------------------------------------- postgres

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [[ -x $d/pg_ctl ]] || die "postgres: no /usr/lib/postgresql/<ver>/bin/pg_ctl; run scripts/system-deps.sh"
  echo "$d"
}

# Run as the postgres OS user when root (PostgreSQL refuses to run as root).
as_pg() {
  if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# Sets PG_BASE (data, socket, log live there). Normally var/postgres; when the
# postgres user cannot reach var/ (repo under /root, say), a folder under
# /var/lib/meterray keyed by the repo path.
pg_paths() {
  PG_BASE=$VAR/postgres
  mkdir -p "$PG_BASE"
  if is_root; then
    chown postgres:postgres "$PG_BASE"
    if ! runuser -u postgres -- test -w "$PG_BASE" 2>/dev/null; then
      PG_BASE=/var/lib/meterray/$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)/postgres
      mkdir -p "$PG_BASE"
      chown postgres:postgres "$PG_BASE"
      log "postgres: user postgres cannot reach $VAR; data dir is $PG_BASE instead"
    fi
  fi
  PG_DATA=$PG_BASE/data
  PG_SOCK=$PG_BASE/run
  PG_LOG=$LOGDIR/postgres.log
  [[ $PG_BASE == "$VAR/postgres" ]] || PG_LOG=$PG_BASE/postgres.log
}

pg_prepare_dirs() {
  mkdir -p "$PG_SOCK"
  touch "$PG_LOG"
  if is_root; then chown postgres:postgres "$PG_SOCK" "$PG_LOG"; fi
  if [[ $PG_LOG != "$LOGDIR/postgres.log" ]]; then ln -sfn "$PG_LOG" "$LOGDIR/postgres.log"; fi
}

pg_initdb() {
  [[ -s $PG_DATA/PG_VERSION ]] && return 0
  log "postgres: initdb $PG_DATA"
  mkdir -p "$PG_DATA"
  if is_root; then chown postgres:postgres "$PG_DATA"; fi
  chmod 700 "$PG_DATA"
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >>"$PG_LOG" 2>&1 \
    || fail_with_log postgres "$PG_LOG" "initdb failed"
  echo "include 'meterray.conf'" >>"$PG_DATA/postgresql.conf"
}

# Rewritten on every start so port changes take effect.
pg_write_conf() {
  cat >"$PG_DATA/meterray.conf" <<EOF
# generated by scripts/services.sh
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 200
shared_buffers = 256MB
effective_cache_size = 1GB
work_mem = 8MB
maintenance_work_mem = 128MB
wal_buffers = 16MB
max_wal_size = 2GB
checkpoint_completion_target = 0.9
max_worker_processes = 4
max_parallel_workers = 2
max_parallel_workers_per_gather = 1
password_encryption = scram-sha-256
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
  if is_root; then chown postgres:postgres "$PG_DATA/meterray.conf"; fi
}

pg_psql() { # superuser over the unix socket
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -d postgres "$@"
}

pg_bootstrap() {
  pg_psql -c "DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'meterray') THEN
      CREATE ROLE meterray LOGIN CREATEDB PASSWORD 'meterray';
    ELSE
      ALTER ROLE meterray LOGIN CREATEDB PASSWORD 'meterray';
    END IF; END \$\$;" >/dev/null
  if [[ -z $(pg_psql -Atc "SELECT 1 FROM pg_database WHERE datname = 'meterray'") ]]; then
    pg_psql -c "CREATE DATABASE meterray OWNER meterray" >/dev/null
    log "postgres: created role and database meterray"
  fi
}

pg_wait_ready() {
  local deadline=$((SECONDS + PG_TIMEOUT))
  until "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" \
      && PGPASSWORD=meterray PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -X -Atq \
         "host=$HOST port=$PG_PORT user=meterray dbname=meterray" -c 'SELECT 1' >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail_with_log postgres "$PG_LOG" "not ready after $PG_TIMEOUT s (log: $PG_LOG)"
    sleep 0.3
  done
}

up_postgres() {
  local t0
  t0=$(now_ms)
  PG_BIN=$(pg_bin)
  already_up postgres postgres "$PG_PORT" && return 0
  pg_paths
  pg_prepare_dirs
  pg_initdb
  pg_write_conf
  log "postgres: starting on $HOST:$PG_PORT (data $PG_DATA, log $PG_LOG)"
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_TIMEOUT" start >/dev/null \
    || fail_with_log postgres "$PG_LOG" "pg_ctl start failed (log: $PG_LOG)"
  head -n1 "$PG_DATA/postmaster.pid" >"$(pidfile postgres)"
  pg_bootstrap
  pg_wait_ready
  log "postgres: ready in $(elapsed "$t0") (pid $(pid_of postgres postgres))"
}

down_postgres() {
  local pid
  pid=$(pid_of postgres postgres)
  if [[ -z $pid ]]; then
    log "postgres: nothing to stop (no live pid file of ours)"
    rm -f "$(pidfile postgres)"
    return 0
  fi
  PG_BIN=$(pg_bin)
  PG_DATA=$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n '/^-D$/{n;p;q}')
  log "postgres: stopping pid $pid"
  if [[ -n $PG_DATA ]]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null || true
  else
    kill -INT "$pid" 2>/dev/null || true
  fi
  wait_exit "$pid" 60 || die "postgres: pid $pid still running"
  rm -f "$(pidfile postgres)"
  log "postgres: stopped"
}

# ---------------------------------------------------------------- kafka

kafka_fetch_libs() {
  local sum
  sum=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  if [[ -f $KAFKA_LIBS/.pom.sha256 && $(cat "$KAFKA_LIBS/.pom.sha256") == "$sum" ]]; then return 0; fi
  command -v mvn >/dev/null || die "kafka: mvn not found; run scripts/system-deps.sh"
  log "kafka: fetching jars from Maven Central into $KAFKA_LIBS"
  rm -rf "$KAFKA_LIBS"
  mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS" \
    >"$LOGDIR/kafka-fetch.log" 2>&1 \
    || fail_with_log kafka "$LOGDIR/kafka-fetch.log" "mvn dependency:copy-dependencies failed"
  echo "$sum" >"$KAFKA_LIBS/.pom.sha256"
}

kafka_write_conf() {
  mkdir -p "$KAFKA_DIR/data"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# generated by scripts/services.sh
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=3
num.io.threads=4
log.retention.hours=168
EOF
  cat >"$KAFKA_DIR/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by scripts/services.sh -->
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="$LOGDIR/kafka.log" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log.LogCleaner" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
EOF
  cat >"$KAFKA_DIR/log4j2-tools.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by scripts/services.sh: command-line tools log warnings to stderr -->
<Configuration status="WARN">
  <Appenders><Console name="err" target="SYSTEM_ERR"><PatternLayout pattern="%p %m%n"/></Console></Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="err"/></Root></Loggers>
</Configuration>
EOF
}

kafka_tool() { # CLASS ARGS...
  java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2-tools.xml" -cp "$KAFKA_LIBS/*" "$@"
}

kafka_format() {
  [[ -f $KAFKA_DIR/data/meta.properties ]] && return 0
  local id
  id=$(kafka_tool kafka.tools.StorageTool random-uuid)
  log "kafka: formatting $KAFKA_DIR/data (cluster id $id, standalone KRaft controller)"
  kafka_tool kafka.tools.StorageTool format --config "$KAFKA_DIR/server.properties" \
    --cluster-id "$id" --standalone >>"$LOGDIR/kafka.log" 2>&1 \
    || fail_with_log kafka "$LOGDIR/kafka.log" "storage format failed"
}

# True when the broker answers metadata requests (not just the TCP port).
kafka_answers() {
  port_open "$KAFKA_PORT" || return 1
  if [[ -x $PYTHON ]] && "$PYTHON" -c 'import confluent_kafka' 2>/dev/null; then
    "$PYTHON" - "$HOST:$KAFKA_PORT" 2>/dev/null <<'EOF'
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1], "socket.timeout.ms": 3000, "log_level": 0})
md = admin.list_topics(timeout=3)
sys.exit(0 if md.brokers else 1)
EOF
  else
    timeout 20 java -Xmx128m -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2-tools.xml" -cp "$KAFKA_LIBS/*" \
      org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$HOST:$KAFKA_PORT" >/dev/null 2>&1
  fi
}

# Starts the JVM without waiting (kafka_wait does), so the other services start meanwhile.
# Sets KAFKA_STARTED=1 when there is something to wait for.
kafka_launch() {
  KAFKA_STARTED=0
  KAFKA_T0=$(now_ms)
  if already_up kafka kafka.Kafka "$KAFKA_PORT"; then
    [[ -n $(pid_of kafka kafka.Kafka) ]] && KAFKA_STARTED=1  # ours may still be starting: wait for it
    return 0
  fi
  command -v java >/dev/null || die "kafka: java not found; run scripts/system-deps.sh"
  kafka_fetch_libs
  kafka_write_conf
  kafka_format
  log "kafka: starting on $HOST:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT, log $LOGDIR/kafka.log)"
  (cd "$KAFKA_DIR" && exec setsid nohup java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml" -Dkafka.logs.dir="$LOGDIR" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    </dev/null >>"$LOGDIR/kafka-console.log" 2>&1) &
  echo $! >"$(pidfile kafka)"
  KAFKA_STARTED=1
}

kafka_wait() {
  [[ ${KAFKA_STARTED:-0} == 1 ]] || return 0
  local deadline=$((SECONDS + KAFKA_TIMEOUT)) pid
  until kafka_answers; do
    pid=$(pid_of kafka kafka.Kafka)
    [[ -n $pid ]] || fail_with_log kafka "$LOGDIR/kafka.log" \
      "the broker exited during start-up (logs: $LOGDIR/kafka.log, $LOGDIR/kafka-console.log)"
    ((SECONDS < deadline)) || fail_with_log kafka "$LOGDIR/kafka.log" \
      "not ready after $KAFKA_TIMEOUT s (pid $pid still running; log: $LOGDIR/kafka.log)"
    sleep 0.5
  done
  log "kafka: ready in $(elapsed "$KAFKA_T0") (pid $(pid_of kafka kafka.Kafka))"
}

up_kafka() { kafka_launch; kafka_wait; }
down_kafka() { stop_pid kafka kafka.Kafka 90; }

# ---------------------------------------------------------------- mosquitto

mqtt_write_conf() {
  mkdir -p "$MQTT_DIR/data"
  {
    echo "# generated by scripts/services.sh"
    # as root, mosquitto would switch to user mosquitto, who cannot write var/
    if is_root; then echo "user root"; fi
    echo "listener $MQTT_PORT $HOST"
    echo "allow_anonymous true"
    echo "persistence true"
    echo "persistence_location $MQTT_DIR/data/"
    echo "autosave_interval 60"
    # Queue limits (mosquitto.conf(5)): the broker sends a subscriber at most max_inflight_messages
    # unacknowledged QoS 1 messages (an MQTT 5 client's Receive Maximum lowers it; meterray's shards ask
    # for ~100, DESIGN.md) and queues at most max_queued_messages / max_queued_bytes more per session;
    # past either limit it drops the message silently (counted in $SYS/broker/publish/messages/dropped).
    # The defaults (20 in flight, 1000 queued) drop at once when a shard lags a second behind a
    # 10,000 messages/s fleet, or restarts. A million messages per session rides out a shard restart or
    # a Kafka outage of ~100 s at 10,000 messages/s (2 shards: ~200 s); the byte limit bounds the broker's
    # memory (payload bytes per session) when the messages are large gateway batches.
    echo "max_inflight_messages 100"
    echo "max_queued_messages 1000000"
    echo "max_queued_bytes 268435456"
    echo "pid_file $(pidfile mosquitto)"
    echo "log_dest file $LOGDIR/mosquitto.log"
    echo "log_type error"
    echo "log_type warning"
    echo "log_type notice"
    echo "log_type information"
    echo "log_timestamp_format %Y-%m-%dT%H:%M:%S"
  } >"$MQTT_DIR/mosquitto.conf"
}

mqtt_answers() {
  port_open "$MQTT_PORT" || return 1
  command -v mosquitto_pub >/dev/null || return 0
  timeout 5 mosquitto_pub -h "$HOST" -p "$MQTT_PORT" -q 1 -t meterray/healthcheck -m ok >/dev/null 2>&1
}

up_mosquitto() {
  local t0 deadline
  t0=$(now_ms)
  already_up mosquitto mosquitto "$MQTT_PORT" && return 0
  local bin
  bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  [[ -x $bin ]] || die "mosquitto: not installed; run scripts/system-deps.sh"
  mqtt_write_conf
  rm -f "$(pidfile mosquitto)"
  log "mosquitto: starting on $HOST:$MQTT_PORT (log $LOGDIR/mosquitto.log)"
  "$bin" -c "$MQTT_DIR/mosquitto.conf" -d 2>>"$LOGDIR/mosquitto.log" \
    || fail_with_log mosquitto "$LOGDIR/mosquitto.log" "mosquitto failed to start"
  deadline=$((SECONDS + MQTT_TIMEOUT))
  until [[ -n $(pid_of mosquitto mosquitto) ]] && mqtt_answers; do
    ((SECONDS < deadline)) || fail_with_log mosquitto "$LOGDIR/mosquitto.log" \
      "not ready after $MQTT_TIMEOUT s (log: $LOGDIR/mosquitto.log)"
    sleep 0.2
  done
  log "mosquitto: ready in $(elapsed "$t0") (pid $(pid_of mosquitto mosquitto))"
}

down_mosquitto() { stop_pid mosquitto mosquitto 20; }

# ---------------------------------------------------------------- commands

cmd_up() {
  local s t0
  t0=$(now_ms)
  # Kafka's JVM is the slowest: launch it first, wait for it last.
  if has kafka "$@"; then kafka_launch; fi
  if has postgres "$@"; then up_postgres; fi
  if has mosquitto "$@"; then up_mosquitto; fi
  if has kafka "$@"; then kafka_wait; fi
  log "up: done in $(elapsed "$t0")"
  for s in "$@"; do status_one "$s"; done
}

cmd_down() {
  local s
  # reverse order of start
  for s in mosquitto kafka postgres; do
    if has "$s" "$@"; then "down_$s"; fi
  done
}

status_one() {
  case $1 in
    postgres) status_line postgres postgres "$PG_PORT" ;;
    kafka) status_line kafka kafka.Kafka "$KAFKA_PORT" ;;
    mosquitto) status_line mosquitto mosquitto "$MQTT_PORT" ;;
  esac
}

has() { local x=$1; shift; [[ " $* " == *" $x "* ]]; }

usage() {
  echo "usage: $0 up|down|status [postgres|kafka|mosquitto ...]" >&2
  exit 2
}

main() {
  (($# >= 1)) || usage
  local cmd=$1 s
  shift
  (($# > 0)) || set -- "${ALL_SERVICES[@]}"
  for s in "$@"; do
    has "$s" "${ALL_SERVICES[@]}" || { echo "unknown service: $s" >&2; usage; }
  done
  # `down` goes by pid files only: it works even when the settings or the virtualenv are gone.
  [[ $cmd == down ]] || load_ports
  mkdir -p "$LOGDIR" "$RUNDIR"
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) for s in "$@"; do status_one "$s"; done ;;
    *) usage ;;
  esac
}

main "$@"
