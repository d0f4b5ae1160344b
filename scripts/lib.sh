# Shell helpers of the test stages (sourced by test.sh, test-py36.sh, test-py38.sh and
# install-browser.sh; bash).
#
# A stage's exit status says what it did: 0 passed, 77 skipped (the automake convention),
# anything else failed. A stage that skips or fails for a reason it knows writes that reason
# as one line into the file $DEVICE_AGENT_STAGE_NOTE (set by test.sh), so the summary can say
# why. In CI (CI=true) a stage that cannot run here is a failure, never a skip.

SKIPPED=77

# stage_unavailable STAGE REASON: this stage cannot run on this machine. Exits: 77 (skipped)
# on a developer's machine, 1 in CI.
stage_unavailable() {
  local stage="$1" reason="$2"
  if [ "${CI:-}" = true ]; then
    _stage_note "$reason (CI=true: every stage must run)"
    echo "$stage: FAILED: $reason (CI=true: every stage must run)" >&2
    exit 1
  fi
  _stage_note "$reason"
  echo "$stage: skipped: $reason" >&2
  exit "$SKIPPED"
}

_stage_note() {
  if [ -n "${DEVICE_AGENT_STAGE_NOTE:-}" ]; then
    printf '%s\n' "$1" >"$DEVICE_AGENT_STAGE_NOTE"
  fi
}

# find_python X.Y: print the path of a working pythonX.Y and return 0, else return 1.
# Looks in $PYENV_ROOT/versions (default ~/.pyenv), then asks pyenv itself when it is on
# PATH (its versions, wherever its root is), then PATH. A candidate must run: a pyenv shim
# for a version that is not selected exits 127.
find_python() {
  local version="$1" candidate installed
  local -a candidates=()
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version"; do
    candidates+=("$candidate")
  done
  if command -v pyenv >/dev/null 2>&1; then
    while read -r installed; do
      candidate="$(pyenv prefix "$installed" 2>/dev/null)/bin/python$version" \
        && candidates+=("$candidate")
    done < <(pyenv versions --bare 2>/dev/null | grep -E "^${version//./\\.}\.[0-9]+$")
  fi
  candidate="$(command -v "python$version" 2>/dev/null)" && candidates+=("$candidate")
  for candidate in "${candidates[@]}"; do
    if [ -x "$candidate" ] && "$candidate" -c "import sys" >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# where_python_was_sought X.Y: the places find_python looked, for a message.
where_python_was_sought() {
  echo "looked in ${PYENV_ROOT:-$HOME/.pyenv}/versions/$1.*, pyenv's versions and PATH;" \
    "install one (pyenv install $1) or name it with PY${1//./}=/path/to/python$1"
}
