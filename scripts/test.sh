#!/usr/bin/env bash
# The test command (what .ci/run runs). Sets up the development environment when needed, then
# runs every stage, even after one failed:
#   ruff; the browser (Debian's chromium for the dashboard's and /docs' browser tests);
#   the whole suite on the development Python; the torch side again on Python 3.6 + torch
#   1.10 (JetPack 4, scripts/test-py36.sh); the API side on Python 3.8 with its pinned
#   dependencies (scripts/test-py38.sh).
# It ends with one line per stage -- passed, failed or skipped, and why -- and exits non-zero
# when any stage failed. In CI (CI=true) a stage that cannot run here fails.
#
# Usage: scripts/test.sh [--no-browser] [pytest args]
#   --no-browser (or DEVICE_AGENT_SKIP_BROWSER=1): do not install chromium; the browser tests
#   are skipped and say so.
set -uo pipefail  # no -e: a failing stage must not hide the stages after it
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
if [ "${1:-}" = "--no-browser" ]; then
  export DEVICE_AGENT_SKIP_BROWSER=1
  shift
fi
# shellcheck source=scripts/setup.sh
if ! source "$ROOT/scripts/setup.sh"; then
  echo "test.sh: the development environment could not be set up: no stage ran" >&2
  exit 1
fi
cd "$ROOT" || exit 1

SUMMARY=()
FAILED=()
# every stage names its 10 slowest tests: CI has 45 minutes on 2 cores, and its log is where
# a stage that grows shows which test grew
export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-} --durations=10"

# stage NAME COMMAND...: run one stage, record its outcome and how long it took.
stage() {
  local name="$1" note started status took outcome
  shift
  note="$(mktemp)"
  started=$SECONDS
  echo "=== $name: $*" >&2
  DEVICE_AGENT_STAGE_NOTE="$note" "$@"
  status=$?
  took="$(( (SECONDS - started) / 60 ))m$(( (SECONDS - started) % 60 ))s"
  case $status in
    0) outcome="passed   ($took)" ;;
    "$SKIPPED") outcome="skipped  ($(head -n 1 "$note" | grep . || echo "it gave no reason"))" ;;
    *) outcome="failed   (exit $status after $took$(test -s "$note" && echo ": $(head -n 1 "$note")"))"
       FAILED+=("$name") ;;
  esac
  rm -f "$note"
  SUMMARY+=("$(printf '  %-16s %s' "$name" "$outcome")")
}

stage ruff ruff check device_agent tests benchmarks
if [ "${DEVICE_AGENT_SKIP_BROWSER:-}" = 1 ]; then
  SUMMARY+=("$(printf '  %-16s %s' browser \
    "skipped  (--no-browser / DEVICE_AGENT_SKIP_BROWSER=1: the browser tests skip)")")
else
  stage browser bash "$ROOT/scripts/install-browser.sh"
fi
stage "suite ($(python -c 'import sys; print("%d.%d" % sys.version_info[:2])'))" \
  python -m pytest -q "$@"
stage "torch side 3.6" bash "$ROOT/scripts/test-py36.sh" "$@"
stage "API side 3.8" bash "$ROOT/scripts/test-py38.sh" "$@"

echo
echo "test.sh: stages"
printf '%s\n' "${SUMMARY[@]}"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "test.sh: FAILED: ${FAILED[*]}"
  exit 1
fi
echo "test.sh: no stage failed"
