# Two images from one recipe, both running as uid/gid 10001 with a read-only root filesystem in
# mind (no writes outside /tmp, which the chart and the webhook mount as an emptyDir):
#
#   --target operator  k1s0-eventstore          `k1s0-eventstore operator` (the chart's Deployment,
#                                               also the pre-delete hook Job)
#   --target sidecar   k1s0-eventstore-sidecar  `k1s0-eventstore serve` (injected into every pod):
#                                               without the operator-only dependencies listed in
#                                               pyproject.toml [tool.k1s0.image] (kopf, kubernetes)
#
# `make image` builds both, with Docker where an engine runs, else with buildah (docs/deploy.md).
# Each build stage makes its virtualenv at /opt/k1s0, the path it runs from (a venv cannot move);
# the runtime stages hold the base image, that venv, and no pip, setuptools or wheel.
#
# The base is pinned by digest (refresh: `docker buildx imagetools inspect python:3.11-slim-bookworm`).
# Where that registry cannot be reached, `make image` passes PYTHON_IMAGE=localhost/k1s0-python-base
# (a Debian bookworm root filesystem with Debian's python3, made by mmdebstrap).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
# The runtime dependencies from pyproject.toml with the otel extra (tracing is in the images, off
# until OTEL_* variables turn it on); the sidecar's without the operator-only ones.
RUN python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); skip = set(p['tool']['k1s0']['image']['operator-only']); deps = p['project']['dependencies'] + p['project']['optional-dependencies']['otel']; name = lambda d: re.split(r'[\[<>=!~; ]', d, maxsplit=1)[0].lower(); open('/tmp/operator.txt', 'w').write('\n'.join(deps) + '\n'); open('/tmp/sidecar.txt', 'w').write('\n'.join(d for d in deps if name(d) not in skip) + '\n')"

FROM build-base AS build-operator
# Where PyPI is reached through a mirror, or a proxy with its own CA (this stage only).
ARG PIP_INDEX_URL
ARG PIP_CERT
RUN python -m venv /opt/k1s0 && /opt/k1s0/bin/pip install -q -r /tmp/operator.txt
COPY sidecar/ sidecar/
COPY operator/ operator/
COPY cli/ cli/
RUN /opt/k1s0/bin/pip install -q --no-deps . \
 && /opt/k1s0/bin/pip uninstall -q -y pip setuptools wheel \
 && /opt/k1s0/bin/k1s0-eventstore version

FROM build-base AS build-sidecar
# Where PyPI is reached through a mirror, or a proxy with its own CA (this stage only).
ARG PIP_INDEX_URL
ARG PIP_CERT
RUN python -m venv /opt/k1s0 && /opt/k1s0/bin/pip install -q -r /tmp/sidecar.txt
COPY sidecar/ sidecar/
COPY operator/ operator/
COPY cli/ cli/
RUN /opt/k1s0/bin/pip install -q --no-deps . \
 && /opt/k1s0/bin/pip uninstall -q -y pip setuptools wheel \
 && /opt/k1s0/bin/k1s0-eventstore version \
 && ! /opt/k1s0/bin/python -c "import kopf" 2>/dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.licenses="Apache-2.0"
# No package installer at runtime: the base's pip/setuptools/wheel (and ensurepip's bundled copies)
# go; the user the chart and the webhook run as (runAsUser 10001) exists.
RUN rm -rf /usr/local/bin/pip* /usr/local/lib/python3*/site-packages/pip* \
      /usr/local/lib/python3*/site-packages/setuptools* /usr/local/lib/python3*/site-packages/wheel* \
      /usr/local/lib/python3*/site-packages/_distutils_hack /usr/local/lib/python3*/site-packages/distutils-precedence.pth \
      /usr/local/lib/python3*/ensurepip/_bundled /usr/lib/python3*/ensurepip/_bundled /usr/share/python-wheels \
 && groupadd --system --gid 10001 k1s0 \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin k1s0
ENV PATH=/opt/k1s0/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["k1s0-eventstore"]

FROM runtime AS sidecar
LABEL org.opencontainers.image.title="k1s0-eventstore-sidecar" \
      org.opencontainers.image.description="k1s0 event store: the REST/gRPC sidecar"
COPY --from=build-sidecar /opt/k1s0 /opt/k1s0
EXPOSE 8080 9090 9091
CMD ["serve"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="k1s0-eventstore" \
      org.opencontainers.image.description="k1s0 event store: the Kopf operator and sidecar-injection webhook"
COPY --from=build-operator /opt/k1s0 /opt/k1s0
EXPOSE 9443 8080 9464
CMD ["operator", "--all-namespaces"]
