#!/usr/bin/env bash
# The demo of `make demo`: a real batch, end to end, against the bundled provider simulator.
# Everything it writes goes to ./demo/ (database, results, errors, simulator log).
set -euo pipefail
BIN=${BIN:-.venv/bin}
BATCHRUN="$BIN/batchrun"
DEMO=demo
rm -rf "$DEMO" && mkdir -p "$DEMO"

# The simulator: 20 requests per second per key, like a real provider's limit, on a free port.
"$BATCHRUN" simulate --port 0 --rate-limit 20/1s --latency 20ms > "$DEMO/simulator.log" 2>&1 &
SIM_PID=$!
trap 'kill $SIM_PID 2>/dev/null || true; wait $SIM_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "listening on" "$DEMO/simulator.log" 2>/dev/null && break
  sleep 0.1
done
BASE_URL=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$DEMO/simulator.log")
[ -n "$BASE_URL" ] || { echo "the simulator did not start:"; cat "$DEMO/simulator.log"; exit 1; }

export BATCHRUN_DB="sqlite:///$DEMO/batchrun.db"
export BATCHRUN_BASE_URL="$BASE_URL"
export BATCHRUN_API_KEYS="demo1:secret-one,demo2:secret-two,demo3:secret-three"

echo "== batchrun submit jobs/example.jsonl"
"$BATCHRUN" submit jobs/example.jsonl
echo "== batchrun run --metrics-file $DEMO/metrics.prom   (3 keys, each limited to 20 requests per 1 s window, against $BASE_URL)"
"$BATCHRUN" run --rate-limit 20/1s --no-progress --metrics-file "$DEMO/metrics.prom"
echo "== batchrun status"
"$BATCHRUN" status
echo "== batchrun report --output $DEMO/report.html"
"$BATCHRUN" report --output "$DEMO/report.html"
echo "== batchrun export --output $DEMO/results.jsonl --errors $DEMO/errors.jsonl"
"$BATCHRUN" export --output "$DEMO/results.jsonl" --errors "$DEMO/errors.jsonl"
"$BIN/python" - "$DEMO/results.jsonl" <<'PY'
import json, subprocess, sys
status = json.loads(subprocess.run([sys.executable, "-m", "batchrun", "status", "--json"],
                                   capture_output=True, text=True, check=True).stdout)
batch = next(b for b in status["batches"] if b["name"] == "example")
with open(sys.argv[1]) as results:
    ids = [json.loads(line)["custom_id"] for line in results]
print(f"demo: {batch['succeeded']} of {batch['total']} succeeded; {sys.argv[1]} has {len(ids)} lines, "
      f"{len(set(ids))} distinct custom_ids")
PY
