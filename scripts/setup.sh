#!/usr/bin/env bash
# Sets up this checkout for tether's tests on a fresh Debian 12 machine:
# the system packages the tests drive for real (as root; skipped with a note
# otherwise), then .venv with the project and its dev tools. Safe to re-run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# tmux, sshd/ssh, socat and iproute2 are exercised by the tests; podman,
# debootstrap and runc build and run the run image; python3-venv makes .venv.
packages=(tmux openssh-server openssh-client socat iproute2 rsync podman debootstrap python3-venv)
packages_without_recommends=(runc)

missing_packages() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
      || echo "$pkg"
  done
}

install_system_packages() {
  local missing missing_bare
  missing="$(missing_packages "${packages[@]}")"
  missing_bare="$(missing_packages "${packages_without_recommends[@]}")"
  if [[ -z "$missing$missing_bare" ]]; then
    echo "setup: system packages already installed"
    return
  fi
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup: not root, so not installing:" $missing $missing_bare >&2
    echo "setup: the tests that need them will fail or skip" >&2
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # shellcheck disable=SC2086  # word splitting of the package lists is intended
  [[ -z "$missing" ]] || apt-get install -y $missing
  # shellcheck disable=SC2086
  [[ -z "$missing_bare" ]] || apt-get install -y --no-install-recommends $missing_bare
}

install_python_environment() {
  local python="${PYTHON:-python3}"
  if [[ ! -x .venv/bin/pip ]]; then  # absent, or left half-made by a failed run
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "setup: tether needs Python 3.11 or newer; $python is older" >&2; exit 1; }
    "$python" -m venv --clear .venv
  fi
  .venv/bin/python -m pip install -e '.[dev]'
}

install_system_packages
install_python_environment
echo "setup: done; run: bash scripts/test.sh"
