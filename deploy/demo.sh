#!/usr/bin/env bash
# The demo: a simulated ERP, a backfill of every demo entity, a burst of messy
# realtime traffic (children before parents, duplicates, out-of-order versions,
# deletes, poison), and a check that ScheduleHub's tables match the simulator's
# expected state. Uses its own database (syncflow_demo, or $DEMO_DATABASE_URL) and
# an embedded NATS on port 14222 (or $DEMO_NATS_URL), so it does not touch a
# running `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${ADMIN_URL:-} # empty: the database postgres of the demo database's server
DB_URL=${DEMO_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/syncflow_demo?sslmode=disable}
NATS_URL=${DEMO_NATS_URL:-nats://127.0.0.1:14222}
SIM_ADDR=${DEMO_SIM_ADDR:-127.0.0.1:18080}
SIZES=(--sites 10 --items 20000 --work-orders 5000)
EVENTS=${DEMO_EVENTS:-20000}
DIR=data/demo

export SYNCFLOW_DATABASE_URL=$DB_URL SYNCFLOW_NATS_URL=$NATS_URL SYNCFLOW_APISMITH_URL=http://$SIM_ADDR SYNCFLOW_LOG_FORMAT=text
rm -rf "$DIR" && mkdir -p "$DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== a fresh database (dropped and created again; DEMO_DATABASE_URL chooses another)"
DATABASE_URL=$DB_URL ADMIN_URL=$ADMIN_URL go run ./deploy/demodb -fresh

echo "== the simulated ERP on http://$SIM_ADDR (${SIZES[*]})"
bin/apismith-sim serve --admin --addr "$SIM_ADDR" "${SIZES[@]}" 2>"$DIR/sim.log" &
pids+=($!)

echo "== syncflow run (embedded NATS at $NATS_URL, logs in $DIR/run.log)"
bin/syncflow run --migrate --apply-streams --embedded-nats-dir "$DIR/nats" --replica demo --http-addr 127.0.0.1:0 2>"$DIR/run.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q "syncflow running" "$DIR/run.log" 2>/dev/null && break; sleep 0.1; done
grep -q "syncflow running" "$DIR/run.log" || { cat "$DIR/run.log"; exit 1; }

echo "== backfill every entity tonight (a window around now)"
window="$(date -u -d '-1 hour' +%H:%M)-$(date -u -d '+3 hours' +%H:%M)"
for e in sites work_centers items work_orders work_order_operations; do
	bin/syncflow schedule set "$e" --window "$window" --tz UTC --days 1 --page-size 1000 >/dev/null
	bin/syncflow schedule enable "$e" >/dev/null
done
bin/syncflow backfill --once 2>>"$DIR/backfill.log"

echo "== $EVENTS realtime events, messy on purpose"
bin/apismith-sim publish --nats-url "$NATS_URL" --sim-url "http://$SIM_ADDR" "${SIZES[@]}" --events "$EVENTS" --expect "$DIR/expected.json"

echo "== waiting for the target to match the simulator"
for _ in $(seq 1 120); do
	if bin/apismith-sim verify --database-url "$DB_URL" --expect "$DIR/expected.json" >"$DIR/verify.txt" 2>&1; then break; fi
	sleep 1
done
cat "$DIR/verify.txt"
echo
bin/syncflow schedule list
echo
echo "dead letters by cause:"
bin/syncflow dlq groups
grep -q "matches" "$DIR/verify.txt"

echo
echo "== syncflow verify: every entity against the ERP and ScheduleHub (exit 0: in sync)"
bin/syncflow verify

echo
echo "== drift without events: items created, changed and deleted in the ERP; rows edited and deleted in ScheduleHub"
bin/apismith-sim drift --sim-url "http://$SIM_ADDR" --database-url "$DB_URL" --entity items \
	--create 3 --change 4 --delete 2 --edit-target 5 --delete-target 1

echo
echo "== syncflow verify --entity items (exit 4: drift found)"
rc=0
bin/syncflow verify --entity items --json >"$DIR/drift.json" || rc=$?
[ "$rc" = 4 ] || { echo "verify exited $rc, want 4"; cat "$DIR/drift.json"; exit 1; }
bin/syncflow verify --entity items --settle 0 || true
for want in '"missing": 3,' '"stale": 4,' '"extra": 2,' '"target-edited": 5,' '"target-missing": 1,'; do
	grep -qF -- "$want" "$DIR/drift.json" || { echo "verify did not find $want"; cat "$DIR/drift.json"; exit 1; }
done
echo "verify found exactly the injected drift: 3 missing, 4 stale, 2 extra, 5 target-edited, 1 target-missing"

echo
echo "== syncflow verify --repair --delete-extra: publish the drifted rows through the pipeline"
bin/syncflow verify --entity items --repair --delete-extra || true
for _ in $(seq 1 60); do
	if bin/syncflow verify --entity items >"$DIR/verify-after.txt" 2>&1; then break; fi
	sleep 1
done
cat "$DIR/verify-after.txt"
bin/syncflow verify --entity items >/dev/null
echo
bin/syncflow status
