# syntax=docker/dockerfile:1
# meterray's image for KubeRay (k8s/) and the cluster launcher (ray_cluster.yaml):
#   docker build -t meterray/meterray:0.1.0-ray2.60.0 .
# The tag is <project version>-ray<RAY_VERSION>; tests/k8s/test_image.py checks that it, the manifests,
# ray_cluster.yaml and pyproject.toml agree.

ARG PYTHON_VERSION=3.11

# ---- build: the project as a wheel (sources never reach the runtime image)
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir "setuptools>=68" wheel
COPY pyproject.toml README.md ./
COPY meterray meterray
COPY actors actors
COPY protocols protocols
COPY storage storage
COPY serve_apps serve_apps
# The web cabinet's browser library (uPlot) from npm, packaged into the wheel (pyproject's package-data).
RUN apt-get update && apt-get install -y --no-install-recommends npm \
    && npm ci --prefix serve_apps/cabinet --no-audit --no-fund --loglevel=error \
    && rm -rf /var/lib/apt/lists/*
COPY simulators simulators
COPY bench bench
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels .

# ---- runtime
FROM python:${PYTHON_VERSION}-slim-bookworm
# The Ray version pyproject.toml allows (ray[serve]>=2.60,<2.61), pinned exactly: every node of a Ray
# cluster must run the same Ray, and the RayService's rayVersion says which.
ARG RAY_VERSION=2.60.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_worker_niceness=0
# wget: KubeRay's probes and tooling call it inside Ray containers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --create-home --shell /bin/bash ray
COPY --from=build /wheels /tmp/wheels
RUN pip install "ray[serve]==${RAY_VERSION}" /tmp/wheels/meterray-*.whl \
    && rm -rf /tmp/wheels
# Non-root, by number so that Kubernetes' runAsNonRoot can verify it (the manifests run as 1000).
USER 1000
WORKDIR /home/ray
CMD ["meterray", "--help"]
