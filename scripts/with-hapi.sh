#!/usr/bin/env bash
# Run a command with a HAPI FHIR R4 JPA server (tests/hapi/server: H2 in memory, rest-hook
# Subscriptions) on a free loopback port, then stop it. Exports HAPI_FHIR_BASE_URL for the command.
# Builds the server with Maven first when it is missing or older than its sources (`make hapi`
# builds only: scripts/with-hapi.sh --build-only). Needs Java 17+ and Maven; without them it says
# so and fails: it never falls back to running without HAPI.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVER_DIR="$ROOT/tests/hapi/server"
TARGET="$SERVER_DIR/target"
JAR="$TARGET/familyview-hapi-test-server.jar"
CLASSPATH_FILE="$TARGET/classpath.txt"

command -v java >/dev/null 2>&1 || { echo "with-hapi: java not found: the HAPI suite needs Java 17 or newer (Debian: apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }
command -v mvn >/dev/null 2>&1 || { echo "with-hapi: mvn not found: the HAPI suite needs Maven to build its HAPI FHIR server (Debian: apt-get install maven)" >&2; exit 1; }
JAVA_MAJOR=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}' | cut -d. -f1)
if [ "${JAVA_MAJOR:-0}" -lt 17 ]; then echo "with-hapi: Java $JAVA_MAJOR found; HAPI FHIR 8 needs Java 17 or newer" >&2; exit 1; fi

build() {
  local stale=0
  if [ ! -f "$JAR" ] || [ ! -f "$CLASSPATH_FILE" ]; then stale=1
  elif [ -n "$(find "$SERVER_DIR/pom.xml" "$SERVER_DIR/src" -newer "$JAR" -type f 2>/dev/null | head -n 1)" ]; then stale=1
  else  # every library on the classpath still in the local Maven repository (~/.m2)?
    tr ':' '\n' < "$CLASSPATH_FILE" | while read -r f; do [ -f "$f" ] || exit 1; done || stale=1
  fi
  [ "$stale" -eq 0 ] && return 0
  echo "with-hapi: building the HAPI FHIR test server (tests/hapi/server; the first build downloads HAPI FHIR from Maven Central)" >&2
  local start=$SECONDS
  if ! (cd "$SERVER_DIR" && mvn -B -q -o package -DskipTests >/dev/null 2>&1); then
    (cd "$SERVER_DIR" && mvn -B -q package -DskipTests) || { echo "with-hapi: building the HAPI FHIR test server failed" >&2; exit 1; }
  fi
  echo "with-hapi: built in $((SECONDS - start))s" >&2
}

# one build at a time (two `make test`s in one tree), and each server runs from its own copy of
# the jar, so a rebuild never pulls classes from under a running HAPI
exec 9>"$SERVER_DIR/.build.lock"
flock 9
build
if [ "${1:-}" = "--build-only" ]; then exit 0; fi
RUN_DIR=$(mktemp -d /tmp/familyview-hapi.XXXXXX)
cp "$JAR" "$RUN_DIR/server.jar"
cp "$CLASSPATH_FILE" "$RUN_DIR/classpath.txt"
flock -u 9
exec 9>&-

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
LOG="$RUN_DIR/hapi.log"
start=$SECONDS
java ${HAPI_JAVA_OPTS:--Xms512m -Xmx3g -XX:+UseParallelGC -XX:TieredStopAtLevel=1} -Dhapi.port="$PORT" \
  -cp "$RUN_DIR/server.jar:$(cat "$RUN_DIR/classpath.txt")" uk.nhs.familyview.hapi.HapiTestServer >"$LOG" 2>&1 &
HAPI_PID=$!

cleanup() {
  kill "$HAPI_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$HAPI_PID" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$HAPI_PID" 2>/dev/null || true
  if [ "${KEEP_HAPI_LOG:-0}" = "1" ]; then rm -f "$RUN_DIR/server.jar"; echo "with-hapi: HAPI log kept at $LOG" >&2; else rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT INT TERM

BASE="http://127.0.0.1:$PORT/fhir"
# the CapabilityStatement's software name and version, once HAPI answers (python3: no curl needed)
metadata() {
  python3 - "$BASE/metadata" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    s = json.load(r).get("software", {})
print(s.get("name", "?"), s.get("version", "?"))
PY
}
until SOFTWARE=$(metadata 2>/dev/null); do
  if ! kill -0 "$HAPI_PID" 2>/dev/null; then
    echo "with-hapi: the HAPI FHIR server exited while starting; its log:" >&2; tail -n 60 "$LOG" >&2; exit 1
  fi
  if [ $((SECONDS - start)) -gt "${HAPI_START_TIMEOUT:-300}" ]; then
    echo "with-hapi: the HAPI FHIR server did not answer $BASE/metadata within ${HAPI_START_TIMEOUT:-300}s; its log:" >&2; tail -n 60 "$LOG" >&2; exit 1
  fi
  sleep 0.5
done
echo "with-hapi: $SOFTWARE (CapabilityStatement.software) at $BASE, started in $((SECONDS - start))s" >&2

export HAPI_FHIR_BASE_URL="$BASE"
export HAPI_FHIR_PID="$HAPI_PID"  # for a benchmark to read the server's CPU time (/proc)
export HAPI_FHIR_LOG="$LOG"
export HAPI_FHIR_DISPOSABLE=1  # started for this command alone: the suite may $expunge it
set +e
"$@"
status=$?
set -e
exit $status
