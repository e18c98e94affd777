# One image, two commands: `k1s0-eventstore operator` (the chart's Deployment) and
# `k1s0-eventstore serve` (the injected sidecar). Multi-stage: the build stage installs the
# package into a virtualenv; the runtime stage is python slim + that virtualenv, no compiler,
# no pip cache, no sources, running as uid/gid 10001 with a read-only root filesystem in mind
# (no writes outside /tmp, which the chart and the webhook mount as an emptyDir).
#
#   docker build -t k1s0-eventstore:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/k1s0
WORKDIR /src
# Dependencies first (a layer that survives source edits), then the package itself.
COPY pyproject.toml README.md ./
# ... with the otel extra: tracing is in the image, off until OTEL_* variables turn it on.
RUN /opt/k1s0/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['otel']))" > /tmp/requirements.txt
RUN /opt/k1s0/bin/pip install -r /tmp/requirements.txt
COPY sidecar/ sidecar/
COPY operator/ operator/
RUN /opt/k1s0/bin/pip install --no-deps . \
 && /opt/k1s0/bin/k1s0-eventstore version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="k1s0-eventstore" \
      org.opencontainers.image.description="k1s0 event store: Kopf operator and REST/gRPC sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 k1s0 \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin k1s0
COPY --from=build /opt/k1s0 /opt/k1s0
ENV PATH=/opt/k1s0/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9090 9443
ENTRYPOINT ["k1s0-eventstore"]
CMD ["serve"]
