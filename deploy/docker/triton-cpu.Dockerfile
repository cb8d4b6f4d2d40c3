# syntax=docker/dockerfile:1
# oncostream-triton:0.1.0 -- Triton Inference Server with the CPU realisation of model_repository/
# (python-backend steps running the DALI pipeline definitions and ONNX Runtime on the CPU).
#
# The server is the `tritonserver` binary of the nvidia-pytriton wheel, the one the tests run
# (oncostream/services/triton.py). Its python-backend stub is built for CPython 3.11 and NumPy 1.x, so
# the image's interpreter is Python 3.11 and oncostream pins numpy<2; the stub links libpython3.11.so,
# hence this interpreter's lib/ first on LD_LIBRARY_PATH, and the stub is copied into the python
# backend folder passed with --backend-directory (DESIGN.md, pitfalls). Build from the repository root:
#   docker build -f deploy/docker/triton-cpu.Dockerfile -t oncostream-triton:0.1.0 .
# Never built here: no container runtime.
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
RUN pip install --no-cache-dir setuptools==84.2.1 wheel==0.48.0 \
 && pip wheel --no-cache-dir --wheel-dir /wheels . nvidia-pytriton==0.7.0

FROM ${PYTHON_IMAGE} AS server
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels oncostream==0.1.0 nvidia-pytriton==0.7.0
# the CPU repository (configs validated against Triton's ModelConfig schema by `models build`) and
# the python backend folder with the 3.11 stub, both assembled at build time
RUN oncostream models build --target cpu --out /models \
 && python -c "from pathlib import Path; from oncostream.services.triton import prepare_backends; prepare_backends(Path('/opt/triton'))" \
 && useradd --system --uid 10001 --gid 0 --home-dir /home/triton --create-home triton
ENV LD_LIBRARY_PATH=/usr/local/lib:/usr/local/lib/python3.11/site-packages/nvidia_pytriton.libs \
    ONCOSTREAM_STEP_PATH=/usr/local/lib/python3.11/site-packages \
    OMP_NUM_THREADS=1 \
    PATH=/usr/local/lib/python3.11/site-packages/pytriton/tritonserver/bin:$PATH
USER 10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
# --disable-auto-complete-config replaces the deprecated --strict-model-config
ENTRYPOINT ["tritonserver", "--model-repository=/models", "--backend-directory=/opt/triton/backends", \
            "--disable-auto-complete-config", "--exit-on-error=true", "--strict-readiness=true", \
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true"]
