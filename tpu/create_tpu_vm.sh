#!/usr/bin/env bash
# Creates a Cloud TPU VM (one host) or pod slice (several hosts).
#
# Usage:
#   TPU_NAME=kmax ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 tpu/create_tpu_vm.sh [--spot]
#
# ACCELERATOR_TYPE defaults to v4-8 (one host, 4 chips). RUNTIME_VERSION defaults
# to the TensorFlow image that matches pyproject.toml's TensorFlow with the PJRT
# runtime (the "-pod" variant for slices of more than one host); check that the
# zone offers it with `gcloud compute tpus tpu-vm versions list --zone=$ZONE`.
# Extra arguments (e.g. --spot, --network=...) go to `gcloud ... create`.
set -euo pipefail
cd "$(dirname "$0")"
source ./common.sh

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
TF_VERSION="${TF_VERSION:-2.20.0}"
chips="${ACCELERATOR_TYPE##*-}"
# Heuristic: a type suffix above 8 is a multi-host slice (true of v2-v4, whose
# suffix counts TensorCores, 8 per host); for other generations check the host
# count and set RUNTIME_VERSION yourself.
if (( chips > 8 )); then
  RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-vm-tf-${TF_VERSION}-pod-pjrt}"
else
  RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-vm-tf-${TF_VERSION}-pjrt}"
fi

echo "Creating ${TPU_NAME}: ${ACCELERATOR_TYPE}, ${RUNTIME_VERSION}, ${ZONE}, project ${PROJECT}"
gcloud compute tpus tpu-vm create "${TPU_NAME}" \
  --zone="${ZONE}" --project="${PROJECT}" \
  --accelerator-type="${ACCELERATOR_TYPE}" \
  --version="${RUNTIME_VERSION}" "$@"
gcloud compute tpus tpu-vm describe "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" \
  --format="value(state,acceleratorType,networkEndpoints[].ipAddress)"
