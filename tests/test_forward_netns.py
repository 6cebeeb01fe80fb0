"""The forward refusal matrix with the agent in a network namespace that has
only loopback (tests/netns_refusal.py): refused targets
had a listener that would have answered. Needs root (unshare --net)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root for unshare --net")
def test_refusal_matrix_in_a_loopback_only_namespace() -> None:
    result = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-m", "tests.netns_refusal"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcomes == {
        "10.0.0.2": "OPENED",  # on the allowlist
        "10.0.0.3": "PERMISSION_DENIED",
        "169.254.169.254": "PERMISSION_DENIED",
        "2852039166": "PERMISSION_DENIED",
        "0251.0376.0251.0376": "PERMISSION_DENIED",
        "0xa9fea9fe": "PERMISSION_DENIED",
        "::ffff:169.254.169.254": "PERMISSION_DENIED",
        "0.0.0.0": "PERMISSION_DENIED",
        "127.0.0.1": "OPENED",
    }
