# syntax=docker/dockerfile:1
# One image for every eventfn service: `docker run eventfn:dev <registry|router|executor|retrier>`
# runs that service (`eventfn serve <service>`); `init` is the one-shot step (migrations,
# streams, bootstrap token) a deployment runs first. Build from the repository root:
#   docker build -t eventfn:dev .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build stage: a virtualenv with eventfn and its runtime dependencies, from wheels only (no
# compiler is needed, and none is installed). Not the `embedded` extra: the image talks to
# an external PostgreSQL and NATS, and ships neither server.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:
RUN python -m venv /opt/eventfn
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen/ gen/
COPY services/ services/
# The V8 runtime bundle and SDK chunks (services/runtime/js/dist) are checked in and installed as
# package data: the build fails when the installed package lacks it, or when a service does
# not import with the runtime dependencies alone (-P: the installed package, not /src).
RUN /opt/eventfn/bin/pip install --no-compile . \
    && /opt/eventfn/bin/python -P -c "import importlib.resources as r; \
dist = r.files('services.runtime') / 'js' / 'dist'; \
assert (dist / 'runtime.js').is_file() and (dist / 'sdk' / 'manifest.json').is_file(), 'V8 bundle missing'; \
import services.registry.app, services.router.app, services.executor.app, services.retrier.app"

# Final stage: the slim base, the virtualenv, a non-root user.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="eventfn" \
      org.opencontainers.image.description="eventfn services: registry, router, executor, retrier"
COPY --from=build /opt/eventfn /opt/eventfn
ENV PATH=/opt/eventfn/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EVENTFN_STATE_DIR=/var/lib/eventfn \
    EVENTFN_REGISTRY_LISTEN=0.0.0.0:50051 \
    EVENTFN_ROUTER_LISTEN=0.0.0.0:50052 \
    EVENTFN_ROUTER_HTTP_LISTEN=0.0.0.0:8080 \
    EVENTFN_EXECUTOR_LISTEN=0.0.0.0:50053 \
    EVENTFN_RETRIER_LISTEN=0.0.0.0:50054 \
    EVENTFN_REGISTRY_METRICS_LISTEN=0.0.0.0:9464 \
    EVENTFN_ROUTER_METRICS_LISTEN=0.0.0.0:9465 \
    EVENTFN_EXECUTOR_METRICS_LISTEN=0.0.0.0:9466 \
    EVENTFN_RETRIER_METRICS_LISTEN=0.0.0.0:9467 \
    EVENTFN_LOG_FORMAT=json \
    GRPC_VERBOSITY=ERROR
# STPyV8 copies its ICU data to /usr/share/stpyv8 on first import: done once here, as root,
# so that the non-root user never needs to write there.
RUN python -c "import STPyV8" \
    && groupadd --system --gid 10001 eventfn \
    && useradd --system --uid 10001 --gid eventfn --home-dir /var/lib/eventfn --create-home \
       --shell /usr/sbin/nologin eventfn
USER 10001:10001
WORKDIR /var/lib/eventfn
EXPOSE 50051 50052 50053 50054 8080 9464 9465 9466 9467
# gRPC health of the one service this container runs (grpc.health.v1, no extra binary).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["eventfn", "serve", "--check"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["eventfn", "serve"]
CMD ["registry"]
