# syntax=docker/dockerfile:1
# oncostream:0.1.0 -- worker, gateway, producer and the CPU model-repository builder (the wheel, which
# carries the model repository, program policies and TriageEvent schema, plus its dependencies).
# Build from the repository root:
#   docker build -f deploy/docker/oncostream.Dockerfile -t oncostream:0.1.0 .
# The base is pinned by version; a site that mirrors images also pins the digest it mirrored
# (PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...). Never built here: no container runtime.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY oncostream/ oncostream/
COPY ingest/ ingest/
COPY postprocess/ postprocess/
COPY training/ training/
COPY model_repository/ model_repository/
COPY docs/triage_event.schema.json docs/
# the wheel and every dependency as wheels, so the runtime stage installs offline from /wheels only
RUN pip install --no-cache-dir setuptools==84.2.1 wheel==0.48.0 \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# dcmtk: dcmdjpeg decodes 12-bit lossy JPEG (ingest/decode.py). Versions come with the pinned Debian
# release of the base image (hadolint DL3008 is ignored for that reason: deploy/docker/hadolint.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --gid 0 --home-dir /home/oncostream --create-home oncostream
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels oncostream==0.1.0
# Read-only root file system in Kubernetes: everything written goes under /tmp and /var/lib/oncostream
# (emptyDir or PVC mounts there); the SQLite store and claim directory default below the working dir.
WORKDIR /var/lib/oncostream
RUN chown 10001:0 /var/lib/oncostream
# glibc's transparent huge pages for ONNX Runtime's activations (oncostream/memory.py); set here, the
# command need not start itself again to set it
ENV PYTHONUNBUFFERED=1 \
    ONCOSTREAM_METRICS_HOST=0.0.0.0 \
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1
USER 10001
EXPOSE 9400 11112
# for the worker (its loop rewrites the file, `oncostream worker --health-file ...`); a gateway
# container runs with --no-healthcheck or its own probe
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["oncostream", "health", "--file", "/tmp/oncostream/heartbeat", "--max-age", "300"]
ENTRYPOINT ["oncostream"]
CMD ["worker", "--bootstrap", "kafka:9092", "--metrics-port", "9400", "--health-file", "/tmp/oncostream/heartbeat"]
