# syntax=docker/dockerfile:1
# GPU images (deploy/k8s/overlays/gpu). NEVER BUILT OR RUN: no GPU and no container runtime exist where
# oncostream is developed (README, Honest limits). Written to Triton's documented procedure for a
# python-backend stub of another Python version.
#   docker build -f deploy/docker/triton-gpu.Dockerfile --target triton -t oncostream-triton-gpu:0.1.0 .
#   docker build -f deploy/docker/triton-gpu.Dockerfile --target engine-builder -t oncostream-gpu:0.1.0 .
#
# Triton 24.08 ships Python 3.10 and its python backend stub for it; oncostream's python-backend steps
# need CPython 3.11 with NumPy 1.x (pyproject.toml: requires-python <3.12, numpy<2). So a stub is built
# for 3.11 from python_backend at the same release tag, and the steps run in a 3.11 virtual environment
# (ONCOSTREAM_STEP_PATH, read by every generated step model.py).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.08-py3
ARG TRITON_TAG=r24.08

FROM ${TRITON_IMAGE} AS python311
# deadsnakes: CPython 3.11 for Ubuntu 22.04 (the Triton 24.08 base); versions follow the PPA
# (DL3008 ignored, deploy/docker/hadolint.yaml)
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
 && rm -rf /var/lib/apt/lists/*

FROM python311 AS stub
ARG TRITON_TAG
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake git rapidjson-dev libarchive-dev zlib1g-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
RUN git clone --depth 1 --branch "${TRITON_TAG}" https://github.com/triton-inference-server/python_backend \
 && cmake -S python_backend -B python_backend/build -DTRITON_ENABLE_GPU=ON \
      -DTRITON_BACKEND_REPO_TAG="${TRITON_TAG}" -DTRITON_COMMON_REPO_TAG="${TRITON_TAG}" \
      -DTRITON_CORE_REPO_TAG="${TRITON_TAG}" -DPYBIND11_PYTHON_VERSION=3.11 \
      -DPYTHON_EXECUTABLE=/usr/bin/python3.11 \
 && cmake --build python_backend/build --target triton-python-backend-stub -j "$(nproc)"

FROM python311 AS steps
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY oncostream/ oncostream/
COPY ingest/ ingest/
COPY postprocess/ postprocess/
COPY training/ training/
COPY model_repository/ model_repository/
COPY docs/triage_event.schema.json docs/
RUN python3.11 -m venv /opt/oncostream \
 && /opt/oncostream/bin/pip install --no-cache-dir setuptools==84.2.1 wheel==0.48.0 \
 && /opt/oncostream/bin/pip install --no-cache-dir . \
 && rm -rf /src

# init container of the gpu overlay: writes the TensorRT realisation and builds FP16 engines on the
# node's own GPU into the engine cache (deploy/k8s/overlays/gpu)
FROM steps AS engine-builder
RUN /opt/oncostream/bin/pip install --no-cache-dir tensorrt-cu12==10.3.0 \
 && useradd --system --uid 10001 --gid 0 --home-dir /home/oncostream --create-home oncostream
ENV PATH=/opt/oncostream/bin:$PATH
USER 10001
ENTRYPOINT ["oncostream"]

FROM python311 AS triton
COPY --from=steps /opt/oncostream /opt/oncostream
COPY --from=stub /build/python_backend/build/triton_python_backend_stub /opt/tritonserver/backends/python/
RUN useradd --system --uid 10001 --gid 0 --home-dir /home/triton --create-home triton
ENV ONCOSTREAM_STEP_PATH=/opt/oncostream/lib/python3.11/site-packages \
    LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH}
USER 10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["tritonserver", "--model-repository=/models", "--disable-auto-complete-config", \
            "--exit-on-error=true", "--strict-readiness=true", "--allow-metrics=true", "--allow-gpu-metrics=true"]
