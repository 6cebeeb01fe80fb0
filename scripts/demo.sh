#!/usr/bin/env bash
# The main job on one machine: set up, start a tether-agent on 127.0.0.1 with
# a freshly made token (TLS on, its certificate pinned on first use), and open
# a `tether connect` shell into it. Everything lives under a temp dir and is
# cleaned up when the shell ends. Extra arguments go to `tether connect`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[[ -x .venv/bin/tether ]] || bash scripts/setup.sh
bin="$root/.venv/bin"

work="$(mktemp -d -t tether-demo.XXXXXX)"
agent_pid=""
cleanup() {
  [[ -z "$agent_pid" ]] || kill "$agent_pid" 2>/dev/null || true
  [[ -z "$agent_pid" ]] || wait "$agent_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export XDG_CONFIG_HOME="$work/config" XDG_STATE_HOME="$work/state"

(umask 077 && "$bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$work/token")
port="$("$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

"$bin/tether-agent" serve --listen "127.0.0.1:$port" --token-file "$work/token" \
  --state-dir "$work/agent" --run-name demo >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do
  grep -q fingerprint "$work/agent.log" 2>/dev/null && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log" >&2; exit 1; }
  sleep 0.1
done
cat "$work/agent.log" >&2

"$bin/tether" runs add demo --address "127.0.0.1:$port" --token-file "$work/token" >&2
if [[ -t 0 ]]; then
  "$bin/tether" connect demo "$@"
else  # no terminal (CI, a pipe): show that the shell works, then leave
  "$bin/tether" exec demo -- 'echo "hello from $(hostname) via tether"'
fi
