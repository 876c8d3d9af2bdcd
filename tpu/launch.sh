#!/usr/bin/env bash
# Launches a recipe on every worker of the slice with the TPU overrides.
#
# Usage:
#   TPU_NAME=kmax ZONE=us-central2-b tpu/launch.sh \
#       experiments/coco/kmax_r50_1281_150k.gin gs://BUCKET/runs/kmax_r50 [MODE] \
#       [-- --gin_param='K=V' ...]
#
# MODE defaults to train_and_eval. The model directory and the TFRecords must be
# on Cloud Storage (every worker reads and writes them). tpu/overrides.gin is
# applied after the recipe (bfloat16, XLA, the TPU matcher, synchronized batch
# norm, a long steps_per_loop); anything after `--` is passed to main.py last.
# Every worker runs the same command (TPUStrategy with --tpu=local on a TPU VM;
# the workers of a pod find each other through the TPU runtime). The run goes on
# in the background on the workers (nohup); its log is <REMOTE_DIR>/train.log.
set -euo pipefail
cd "$(dirname "$0")"
if (( $# < 2 )); then
  sed -n '2,15p' "$(basename "$0")"
  exit 2
fi
source ./common.sh
RECIPE="$1"
MODEL_DIR="$2"
MODE="train_and_eval"
shift 2
if [[ $# -gt 0 && "$1" != "--" ]]; then MODE="$1"; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
if [[ "${MODEL_DIR}" != gs://* ]]; then
  echo "error: the model directory must be on Cloud Storage (gs://...), got ${MODEL_DIR}" >&2
  exit 2
fi
EXTRA=""
for arg in "$@"; do EXTRA+=" $(printf '%q' "${arg}")"; done

on_all_workers "set -euo pipefail
  cd ${REMOTE_DIR}
  nohup python3 main.py --tpu=local --gin_file=${RECIPE} --gin_file=tpu/overrides.gin \
    --mode=${MODE} --model_dir=${MODEL_DIR}${EXTRA} > train.log 2>&1 &
  echo \"\$(hostname): started, pid \$!\""
echo "Follow worker 0: gcloud compute tpus tpu-vm ssh ${TPU_NAME} --zone=${ZONE} --worker=0 --command='tail -f ${REMOTE_DIR}/train.log'"
echo "TensorBoard: tensorboard --logdir=${MODEL_DIR}"
