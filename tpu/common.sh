#!/usr/bin/env bash
# Shared settings of the tpu/ scripts; sourced, not run. Every value can be set
# in the environment before calling a script.
#
#   TPU_NAME          name of the TPU VM / pod slice            (required)
#   ZONE              e.g. us-central2-b                          (required)
#   PROJECT           gcloud project (default: gcloud's current one)
#   ACCELERATOR_TYPE  e.g. v4-8 (one host), v4-32 (4 hosts)       (create only)
#   RUNTIME_VERSION   TPU VM software version; TensorFlow images are named
#                     tpu-vm-tf-<x.y.z>[-pod][-pjrt]; list them with
#                     `gcloud compute tpus tpu-vm versions list --zone=$ZONE`
#   REPO_URL          git URL of this library (default: the local checkout's origin)
#   REPO_REF          branch / tag / commit to install (default: main)
#   REMOTE_DIR        where the checkout goes on every worker (default: ~/deeplab_panoptic)
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME (the TPU VM or pod slice name)}"
: "${ZONE:?set ZONE (for example us-central2-b)}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
REPO_REF="${REPO_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-~/deeplab_panoptic}"

# Runs a command on every worker of the slice (one host or a pod).
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" \
    --worker=all --command="$1"
}
