# The run image: tether-agent baked into a Debian-based image.
#
#   podman build --format docker -t tether-agent .      (docker build takes the same arguments)
#   podman build --format docker --build-arg BASE=my-training-image:tag -t my-run-image .
#   podman run -d --network=host -e TETHER_LISTEN=0.0.0.0:7777 \
#     -v ./token:/run/secrets/tether-token:ro tether-agent --run-name my-run --max-duration 8
#
# BASE: any Debian-based image whose python3 is 3.11 or newer (bookworm or later).
# USER: the account the agent and its shells run as; --build-arg USER=root runs them as root.
# UID:  that account's uid when the image makes it (the token file must be readable by it).
# The token file must be mode 0600. The listen address comes from TETHER_LISTEN rather than
# --listen, so that the HEALTHCHECK probes the same port.
# pip in the build stage takes PIP_INDEX_URL, PIP_EXTRA_INDEX_URL and PIP_FIND_LINKS as build
# arguments; behind a TLS-intercepting proxy, hand it the proxy's CA bundle as a secret:
#   --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt --build-arg PIP_CERT=/run/secrets/pip-ca
ARG BASE=debian:bookworm-slim

# python3 and venv, shared by the build stage and the runtime.
FROM ${BASE} AS python
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# The wheel, and the agent's own venv made from it (copied whole into the runtime).
FROM python AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN --mount=type=secret,id=pip-ca python3 -m venv /opt/tether \
 && /opt/tether/bin/pip wheel --no-deps --wheel-dir /wheels /src \
 && /opt/tether/bin/pip install /wheels/tether-*.whl \
 && /opt/tether/bin/pip uninstall -y pip setuptools

FROM python
ARG DEBIAN_FRONTEND=noninteractive
# tmux for managed sessions, util-linux for setsid (a PTY's controlling tty), procps for the
# process picture, tini as PID 1 (signals forwarded, orphans reaped), certificates for downloads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tmux util-linux procps tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ARG USER=tether
ARG UID=10001
RUN if [ "$USER" != root ] && ! id -u "$USER" >/dev/null 2>&1; then \
      useradd --create-home --shell /bin/bash --uid "$UID" --user-group "$USER"; \
    fi

COPY --from=build /opt/tether /opt/tether
# Only the command goes on PATH: the venv's python must not shadow the image's own.
RUN ln -s /opt/tether/bin/tether-agent /usr/local/bin/tether-agent
USER ${USER}

# TETHER_SLEEPER: the agent keeps the run alive, so a --max-duration (or
# TETHER_MAX_DURATION) is required, as mcli requires one, and no run is forgotten.
ENV TETHER_TOKEN_FILE=/run/secrets/tether-token TETHER_LISTEN=0.0.0.0:7777 TETHER_SLEEPER=1
EXPOSE 7777
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD tether-agent health --address "127.0.0.1:${TETHER_LISTEN##*:}"
ENTRYPOINT ["/usr/bin/tini", "--", "tether-agent", "serve"]
