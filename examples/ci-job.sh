#!/usr/bin/env bash
# A CI / device-farm job: run the app's tests through tlsgate, write the reports, fail the build by one rule.
# Settings (all optional): APP_TESTS (the command that runs the app's tests through the proxy),
# PROXY_PORT, IDLE (how long without traffic before tlsgate stops), GATE, OUT, TLSGATE_ARGS (extra `run` flags).
set -uo pipefail
OUT=${OUT:-out}
PROXY_PORT=${PROXY_PORT:-8080}
GATE=${GATE:-high}
export HTTPS_PROXY="http://127.0.0.1:$PROXY_PORT" HTTP_PROXY="http://127.0.0.1:$PROXY_PORT"
export https_proxy="$HTTPS_PROXY" http_proxy="$HTTP_PROXY"
mkdir -p "$OUT" && rm -f "$OUT/findings.jsonl"   # findings are appended: start each job from an empty file

# 1. The proxy: stops by itself once the tests have been quiet for IDLE, exits 1 if this run's findings fail the gate.
# shellcheck disable=SC2086  # TLSGATE_ARGS is a list of flags
tlsgate run --listen-port "$PROXY_PORT" --metrics-port -1 --until-idle "${IDLE:-30s}" --fail-on "$GATE" \
  --findings "$OUT/findings.jsonl" ${TLSGATE_ARGS:-} > "$OUT/tlsgate.log" 2>&1 &
proxy=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT") 2>/dev/null && break; sleep 0.2; done

# 2. The app's tests, through the proxy (devices: point their proxy setting at this host and port).
sh -c "${APP_TESTS:-./run-ui-tests.sh}"; tests_status=$?

# 3. Wait for tlsgate to go idle and stop: 0 clean, 1 the gate failed. Anything else means no verdict:
#    2 it could not start (options, policy, port), 3 a tlsgate bug, above 128 it was killed.
wait "$proxy"; proxy_status=$?
if [ "$proxy_status" -gt 1 ]; then
  cat "$OUT/tlsgate.log"; echo "tlsgate run never ran properly (exit $proxy_status): no verdict" >&2; exit "$proxy_status"
fi

# 4. Reports for the CI: test results, code scanning, people, and the step summary. Without --fail-on a
#    report exits 0, or 2 (bad input) or 3 (a tlsgate bug) when it cannot be made: never 1.
reports_status=0
tlsgate report "$OUT/findings.jsonl" --format junit --out "$OUT/tlsgate-junit.xml" || reports_status=$?
tlsgate report "$OUT/findings.jsonl" --format sarif --out "$OUT/tlsgate.sarif" || reports_status=$?
tlsgate report "$OUT/findings.jsonl" --format html --out "$OUT/tlsgate-report.html" || reports_status=$?
tlsgate report "$OUT/findings.jsonl" --format markdown >> "${GITHUB_STEP_SUMMARY:-$OUT/summary.md}" || reports_status=$?

# 5. The gate: the build fails if the app's tests failed or a finding was blocked or at least $GATE;
#    a report or gate that could not be made fails it with its own code (2, 3), never as a verdict.
tlsgate report "$OUT/findings.jsonl" --fail-on "$GATE" --format json --out "$OUT/tlsgate.json"; gate_status=$?
for status in "$gate_status" "$reports_status"; do
  if [ "$status" -gt 1 ]; then echo "tlsgate report failed (exit $status): no verdict" >&2; exit "$status"; fi
done
[ "$tests_status" -eq 0 ] || exit "$tests_status"
exit "$gate_status"
