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

# 3. Wait for tlsgate to go idle and stop; 0 clean, 1 gate failed, anything else: it never ran properly.
wait "$proxy"; proxy_status=$?
if [ "$proxy_status" -gt 1 ]; then cat "$OUT/tlsgate.log"; exit "$proxy_status"; fi

# 4. Reports for the CI: test results, code scanning, people, and the step summary.
tlsgate report "$OUT/findings.jsonl" --format junit --out "$OUT/tlsgate-junit.xml"
tlsgate report "$OUT/findings.jsonl" --format sarif --out "$OUT/tlsgate.sarif"
tlsgate report "$OUT/findings.jsonl" --format html --out "$OUT/tlsgate-report.html"
tlsgate report "$OUT/findings.jsonl" --format markdown >> "${GITHUB_STEP_SUMMARY:-$OUT/summary.md}"

# 5. The gate: the build fails if the app's tests failed or a finding was blocked or at least $GATE.
tlsgate report "$OUT/findings.jsonl" --fail-on "$GATE" --format json --out "$OUT/tlsgate.json"; gate_status=$?
[ "$tests_status" -eq 0 ] || exit "$tests_status"
exit "$gate_status"
