#!/usr/bin/env bash
# Regenerates protos/*_pb2*.py[i] from protos/*.proto with the pinned
# generators in protos/requirements-gen.txt. `--check` regenerates into a
# scratch copy and fails when the committed files differ.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$(command -v "${PYTHON:-python3}")"
[[ "$python" == /* ]] || python="$PWD/$python"
export PATH="$(dirname "$python"):$PATH"

want_tools="$(grep -E '^grpcio-tools==' "$root/protos/requirements-gen.txt" | cut -d= -f3)"
have_tools="$("$python" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
if [[ "$want_tools" != "$have_tools" ]]; then
  echo "gen_protos: grpcio-tools $have_tools installed, $want_tools pinned" >&2
  exit 2
fi

generate() {  # $1: the directory that holds protos/
  (cd "$1" && "$python" -m grpc_tools.protoc -I . \
    --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
    protos/agent.proto protos/daemon.proto)
}

if [[ "${1:-}" == "--check" ]]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/protos"
  cp "$root/protos/agent.proto" "$root/protos/daemon.proto" "$scratch/protos/"
  generate "$scratch"
  status=0
  for f in {agent,daemon}_pb2.py {agent,daemon}_pb2.pyi {agent,daemon}_pb2_grpc.py \
    {agent,daemon}_pb2_grpc.pyi; do
    if ! diff -q "$scratch/protos/$f" "$root/protos/$f" >/dev/null; then
      echo "gen_protos: protos/$f differs from a fresh generation; run scripts/gen_protos.sh" >&2
      status=1
    fi
  done
  exit $status
fi
generate "$root"
