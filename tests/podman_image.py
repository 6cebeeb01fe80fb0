"""Building the run image with podman on a machine that reaches no container registry.

The base image is made locally (debootstrap from the mirror apt already uses),
and the build's pip is given what the host's pip uses to reach PyPI: a mirror
or the certificate of a TLS-intercepting proxy. podman runs with its own
containers.conf: runc (crun fails on hybrid cgroups) and ulimits the kernel
grants.
"""

import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/debian:bookworm"
SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
# The longest one podman command may take before it is a hang (a cold build included).
PODMAN_TIMEOUT = 600.0


class Podman:
    """podman with this test's containers.conf; a failing call shows its output."""

    def __init__(self, conf_dir: Path) -> None:
        conf = conf_dir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(
        self, *args: str, check: bool = True, stdin: IO[bytes] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", *args],
            stdin=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=PODMAN_TIMEOUT,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def inspect(self, container: str, template: str) -> str:
        return self.run("inspect", "--format", template, container).stdout.strip()


def apt_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The first Debian archive apt uses for the suite: the one that is reachable from here."""
    for path in [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]:
        text = path.read_text() if path.is_file() else ""
        if path.suffix == ".sources":
            found = _deb822_mirror(text)
        elif path.name == "sources.list" or path.suffix == ".list":
            found = _one_line_mirror(text)
        else:
            found = None
        if found:
            return found
    return FALLBACK_MIRROR


def _one_line_mirror(text: str) -> str | None:
    for line in text.splitlines():
        match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if match and match.group(2) == SUITE:
            return match.group(1)
    return None


def _deb822_mirror(text: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = dict(
            re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, flags=re.MULTILINE)
        )
        uris = fields.get("URIs", "").split()
        if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
            return uris[0] if uris else None
    return None


def ensure_base_image(podman: Podman) -> float | None:
    """Makes BASE_IMAGE unless the machine keeps it from an earlier run; returns the seconds
    that took, or None when it was cached."""
    if podman.image_exists(BASE_IMAGE):
        return None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tether-rootfs-") as rootfs:
        argv = ["debootstrap", "--variant=minbase", SUITE, rootfs, apt_mirror()]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PODMAN_TIMEOUT)
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}"
        # apt's downloaded packages and caches stay out, as in Debian's own slim images.
        tar_argv = ["tar", "-C", rootfs, "-c", "--exclude=./var/cache/apt/archives/*.deb"]
        tar_argv += ["--exclude=./var/cache/apt/*.bin", "."]
        with subprocess.Popen(tar_argv, stdout=subprocess.PIPE) as tar:
            assert tar.stdout is not None
            podman.run("import", "-", BASE_IMAGE, stdin=tar.stdout)
        assert tar.returncode == 0, f"tar of the debootstrapped tree exited {tar.returncode}"
    return time.monotonic() - started


def pip_build_options() -> list[str]:
    """`podman build` options that let the build's pip reach PyPI the way the host's pip does:
    the host's certificate bundle (which trusts a TLS-intercepting proxy, where there is
    one) and its http(s) indexes. file:// indexes stay on the host."""
    settings = _host_pip_settings()
    cert = settings.get("cert") or ssl.get_default_verify_paths().cafile
    options: list[str] = []
    if cert and Path(cert).is_file():
        options += ["--secret", f"id=pip-ca,src={cert}"]
        options += ["--build-arg", "PIP_CERT=/run/secrets/pip-ca"]
    for name in ("index-url", "extra-index-url"):
        urls = [url for url in settings.get(name, "").split() if url.startswith("http")]
        if urls:
            options += ["--build-arg", f"PIP_{name.upper().replace('-', '_')}={' '.join(urls)}"]
    return options


def _host_pip_settings() -> dict[str, str]:
    """`pip config list`, names without their scope; the environment wins over files."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in listed.splitlines():
        match = re.match(r"([^.]*)\.([\w-]+)='(.*)'$", line)
        if match:
            scope, name, value = match.groups()
            (from_env if scope == ":env:" else settings)[name] = value
    return settings | from_env


def build_image(podman: Podman, tag: str, uid: int) -> float:
    """Builds the repository's Dockerfile on BASE_IMAGE; returns the seconds it took."""
    started = time.monotonic()
    podman.run(
        "build",
        "--format=docker",  # HEALTHCHECK is a Docker-format field; OCI images drop it
        f"--build-arg=BASE={BASE_IMAGE}",
        f"--build-arg=UID={uid}",
        *pip_build_options(),
        f"--tag={tag}",
        str(REPO_ROOT),
    )
    return time.monotonic() - started
