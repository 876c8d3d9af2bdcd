#!/usr/bin/env bash
# Installs this library (and its pinned dependencies) on every worker of the slice.
#
# Usage:
#   TPU_NAME=kmax ZONE=us-central2-b [REPO_URL=...] [REPO_REF=main] tpu/setup_workers.sh
#
# Each worker clones REPO_URL at REPO_REF into REMOTE_DIR (or updates an existing
# clone) and runs `pip install -e .` there. The TensorFlow of the TPU image is
# kept: pyproject.toml pins the same minor version, so pip does not replace it; the
# check at the end prints each worker's TensorFlow version and its TPU devices.
set -euo pipefail
cd "$(dirname "$0")"
source ./common.sh

REPO_URL="${REPO_URL:-$(git -C .. remote get-url origin 2>/dev/null || true)}"
: "${REPO_URL:?set REPO_URL (git URL of the library; the local checkout has no origin)}"

on_all_workers "set -euo pipefail
  if [ -d ${REMOTE_DIR}/.git ]; then
    git -C ${REMOTE_DIR} fetch --quiet origin && git -C ${REMOTE_DIR} checkout --quiet ${REPO_REF} \
      && git -C ${REMOTE_DIR} pull --quiet --ff-only || true
  else
    git clone --quiet ${REPO_URL} ${REMOTE_DIR} && git -C ${REMOTE_DIR} checkout --quiet ${REPO_REF}
  fi
  cd ${REMOTE_DIR}
  python3 -m pip install --quiet --upgrade pip
  python3 -m pip install --quiet -e .
  python3 -c 'import tensorflow as tf; print(tf.__version__)'"
echo "Installed ${REPO_URL}@${REPO_REF} on every worker of ${TPU_NAME}."
