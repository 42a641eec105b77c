#!/bin/sh
# The images' entrypoint. With arguments it is `datarax-bench` (`docker run IMAGE list`); without,
# it measures the image's profile into /app/results/<profile> and exports it to W&B (an offline
# run beside the results without WANDB_API_KEY), like the SkyPilot task files do on a machine.
set -eu

# Any uid may run the image (`--user "$(id -u):$(id -g)"` makes the results the invoker's): one
# without a writable home gets a fresh one for the data cache and W&B's files.
if ! [ -w "${HOME:-/nonexistent}" ]; then
  HOME="$(mktemp -d /tmp/home.XXXXXX)"
  export HOME
fi

if [ "$#" -gt 0 ]; then
  exec datarax-bench "$@"
fi

RESULTS=/app/results
PROFILE="${DATARAX_BENCH_PROFILE:?the image sets DATARAX_BENCH_PROFILE}"
if ! [ -w "$RESULTS" ]; then
  echo "datarax-bench: $RESULTS is not writable by uid $(id -u); mount a directory of yours there" \
    "and run with --user \"\$(id -u):\$(id -g)\"" >&2
  exit 2
fi
OUT="$RESULTS/$PROFILE"
mkdir -p "$OUT"
# Fails (exit 1) when JAX does not see the profile's backend: no silent CPU fallback.
datarax-bench doctor --profile "$PROFILE" --json "$OUT/doctor.json"
rc=0
# `-e DATARAX_BENCH_SCENARIOS="CV-1 TAB-1"` / `-e DATARAX_BENCH_ADAPTERS="numpy grain"`: a subset.
# shellcheck disable=SC2086
datarax-bench run --profile "$PROFILE" --output-dir "$OUT" \
  ${DATARAX_BENCH_SCENARIOS:+--scenarios $DATARAX_BENCH_SCENARIOS} \
  ${DATARAX_BENCH_ADAPTERS:+--adapters $DATARAX_BENCH_ADAPTERS} || rc=$?
# Whatever the run's outcome, export what it measured; the first failure is the exit status.
datarax-bench export --results-dir "$OUT" || { status=$?; [ "$rc" -ne 0 ] || rc=$status; }
exit "$rc"
