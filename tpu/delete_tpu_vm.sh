#!/usr/bin/env bash
# Deletes the TPU VM / pod slice (the model directory on Cloud Storage stays).
#
# Usage:
#   TPU_NAME=kmax ZONE=us-central2-b tpu/delete_tpu_vm.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./common.sh
gcloud compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" --quiet
