# bids_pcs container image: the BIDS App with every dependency pinned by
# requirements.lock and nothing downloaded at run time.
#
#   docker build -t bids_pcs .                                   # CPU (default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t bids_pcs:cuda .   # NVIDIA GPUs
#   docker run --rm -v /data:/data:ro -v /out:/out bids_pcs /data /out participant
#
# Build arguments
#   BASE_IMAGE       a Debian bookworm image with Python 3.11 and its venv module
#                    (CI uses a local debootstrap image; see .ci/container)
#   TORCH_VARIANT    cpu (default), or a CUDA build of PyTorch such as cu126 or
#                    cu128; it names a folder of PyTorch's wheel index
#   TORCH_INDEX_URL  where torch comes from (default: PyTorch's index for
#                    TORCH_VARIANT); empty means the ordinary package index plus
#                    PIP_FIND_LINKS, as on machines with a local torch wheel
#   PIP_FIND_LINKS   a folder of wheels mounted into the build (optional)
#   VERSION, VCS_REF, BUILD_DATE, IMAGE_TAG   recorded in the OCI labels;
#                    IMAGE_TAG is also what the derivatives report as
#                    GeneratedBy.Container.Tag
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
# The locked dependencies, in a virtual environment that the runtime stage
# copies whole: the build's leftovers (lock file, pip's temporary files) stay
# out of the final image, and this stage is rebuilt only when the lock changes.
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG PIP_FIND_LINKS=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv

# Dependencies first, in their own layer: a change to the code does not
# reinstall 2 GB of wheels. torch alone comes from the variant's index (its
# CPU and CUDA builds share one version number); --no-deps there and the lock
# next, so every other package, torch's own dependencies included, is the
# locked version from the ordinary index. A CUDA torch's extra requirements
# (nvidia-* libraries) are not in the lock and resolve at the versions that
# torch release pins.
COPY requirements.lock /tmp/requirements.lock
# (hadolint's DL3013 cannot see that $torch_pin is the lock's torch== line)
# hadolint ignore=DL3013
RUN torch_pin="$(grep -E '^torch==' /tmp/requirements.lock)" \
    && pip install --no-deps ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$torch_pin" \
    && pip install -r /tmp/requirements.lock

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

COPY --from=builder /opt/venv /opt/venv

# Any UID, read-only root: everything the libraries write at run time goes
# under /tmp (a tmpfs with `--read-only` in podman, `--tmpfs /tmp` in Docker;
# the host's /tmp in Singularity). HOME matters because an arbitrary UID has
# no passwd entry, and Nipype, matplotlib and deno all start from it.
#   NIPYPE_NO_ET, HF_HUB_OFFLINE, DENO_NO_UPDATE_CHECK: no network at run time
#   (clusters often have none); MPLBACKEND: no display.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    MPLBACKEND=Agg \
    NIPYPE_CONFIG_DIR=/tmp/.config/nipype \
    NIPYPE_NO_ET=1 \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DENO_DIR=/tmp/.cache/deno \
    DENO_NO_UPDATE_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8

# The app itself, in a layer of its own (a code change rebuilds a few hundred
# kB, not the 2 GB of dependencies), without touching the dependencies:
# setuptools (locked, as torch needs it) builds it without network access.
COPY pyproject.toml README.md /src/
COPY bids_pcs /src/bids_pcs
COPY pipelines /src/pipelines
RUN PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    pip install --no-deps --no-build-isolation /src \
    && pip check \
    && rm -rf /src

# Fail the build, not a user's run, if the template or an import is missing:
# the MNI152 2009a template comes inside nilearn's wheel. What the check
# leaves in /tmp goes, or a later non-root user could not write there.
RUN python -c "import bids_pcs.cli, ants, bids, monai, nipype, peft, torch; \
from nilearn.datasets import load_mni152_template; load_mni152_template(resolution=1)" \
    && bids_pcs --version \
    && rm -rf /tmp/.cache /tmp/.config

# Build metadata last: a new commit (VCS_REF) or date must not invalidate
# the cached layers above.
ARG VERSION=dev
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG IMAGE_TAG=bids_pcs:${VERSION}
LABEL org.opencontainers.image.title="bids_pcs" \
      org.opencontainers.image.description="BIDS App that finds and classifies the paracingulate sulcus (PCS) in T1-weighted MRI" \
      org.opencontainers.image.url="https://github.com/bids-pcs/bids_pcs" \
      org.opencontainers.image.source="https://github.com/bids-pcs/bids_pcs" \
      org.opencontainers.image.documentation="https://github.com/bids-pcs/bids_pcs#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="bids_pcs developers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}"
# what the derivatives report as GeneratedBy.Container (bids_pcs.io.derivatives)
ENV BIDS_PCS_CONTAINER_TYPE=docker \
    BIDS_PCS_CONTAINER_TAG=${IMAGE_TAG}

WORKDIR /tmp
ENTRYPOINT ["bids_pcs"]
CMD ["--help"]
