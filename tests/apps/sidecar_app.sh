#!/usr/bin/env bash
# A program that knows nothing of pycontainer, run under the sidecar by
# tests/test_sidecar.py. It prints to stdout and stderr in a loop:
#   stdout: "tick N", "heartbeat N" (and "ERROR something broke" once)
#   stderr: "note N" (and "DEBUG verbose detail" once)
# SIGTERM prints "graceful" and exits 0; with the argument "ignore-term" it
# ignores SIGTERM (so only SIGKILL ends it). With $SIDECAR_APP_STATE set, the
# tick counter is written to that file on every round.
if [ "${1:-}" = "ignore-term" ]; then
  trap '' TERM
else
  trap 'echo graceful; exit 0' TERM
fi
i=0
while true; do
  i=$((i + 1))
  if [ "$i" -eq 1 ]; then
    echo "ERROR something broke"
    echo "DEBUG verbose detail" >&2
  fi
  echo "tick $i"
  echo "note $i" >&2
  echo "heartbeat $i"
  if [ -n "${SIDECAR_APP_STATE:-}" ]; then
    echo "$i" > "$SIDECAR_APP_STATE"
  fi
  sleep 0.1
done
