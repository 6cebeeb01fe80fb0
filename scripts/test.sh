#!/usr/bin/env bash
# The one test command: lint, formatting, types, drift of the generated
# protobuf code, then pytest (extra arguments go to pytest). Every step runs
# even when an earlier one fails, so one run shows every problem; the exit
# status is non-zero when any step failed (pytest finding no tests included).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

venv_bin="$root/.venv/bin"
if [[ ! -x "$venv_bin/python" ]]; then
  echo "test: no .venv here; run bash scripts/setup.sh first" >&2
  exit 2
fi
# Tests start the console scripts (tether, tether-agent) by name.
export PATH="$venv_bin:$PATH"

failed=()
step() {  # $1: a name for the summary; the rest: the command
  local name="$1"
  shift
  echo "==> $name" >&2
  "$@" || failed+=("$name (exit $?)")
}

step "ruff check" "$venv_bin/ruff" check .
step "ruff format" "$venv_bin/ruff" format --check .
step "mypy" "$venv_bin/mypy"
step "generated protos" env PYTHON="$venv_bin/python" bash scripts/gen_protos.sh --check
step "pytest" "$venv_bin/pytest" "$@"

if ((${#failed[@]})); then
  echo "test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test: all steps passed" >&2
