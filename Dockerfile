# syntax=docker/dockerfile:1
# amili-registrar: the service image.
#
#   docker build -t amili-registrar .
#   docker run --read-only --tmpfs /tmp -v registrar-data:/data -p 8000:8000 \
#       -e KAFKA_BOOTSTRAP_SERVERS=... -e AMILI_BASE_URL=... -e AMILI_API_KEY=... amili-registrar
#
# Two stages: the builder installs the project and its dependencies (all of them ship wheels; the
# slim base has no compiler) into a virtualenv at /opt/venv; the runtime stage copies that virtualenv onto the same
# slim base, runs as a numeric non-root user and writes nothing outside /tmp and /data, so it runs
# with a read-only root filesystem. Both stages must use the same base: the virtualenv's python is
# a symlink to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone (a placeholder package stands in for the sources),
# so that editing the code does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir service \
    && touch service/__init__.py \
    && pip install . \
    && pip uninstall --yes amili-registrar \
    && rm -rf service build ./*.egg-info

# Then the project itself (built by setuptools, installed as a regular package, byte-compiled by pip
# so that nothing needs to write .pyc files at run time), and pip/setuptools leave the virtualenv.
COPY service ./service
RUN pip install --no-deps . \
    && amili-registrar --help >/dev/null \
    && pip uninstall --yes pip setuptools wheel


FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
ARG GID=10001

# A system user with a numeric id (Kubernetes' runAsNonRoot checks the image's numeric USER), no
# home directory and no login shell; /data is the only directory it owns (the SQLite ledger's
# default place, meant to be a mounted volume).
RUN groupadd --system --gid "${GID}" registrar \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin registrar \
    && install --directory --owner="${UID}" --group="${GID}" --mode=0750 /data

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    PIP_NO_CACHE_DIR=1 \
    TMPDIR=/tmp \
    HTTP_PORT=8000 \
    LEDGER_URL=sqlite:////data/ledger.sqlite3

WORKDIR /data
VOLUME ["/data"]
USER ${UID}:${GID}
EXPOSE 8000
STOPSIGNAL SIGTERM

# Kubernetes uses the chart's probes on /healthz and /readyz, so the image carries no HEALTHCHECK.
ENTRYPOINT ["amili-registrar"]
CMD ["run"]
