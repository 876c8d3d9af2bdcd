"""Training-step speed and peak memory per crop size, with and without bf16 / recompute.

Usage:
  python benchmarks/train_step.py --gin_file=configs/models/max_deeplab_s.gin \
      [--gin_file=...] [--gin_param='K=V'] [--crop_sizes=641,1025,1281] [--batch_size=1] \
      [--steps=3] [--warmup=1] [--variants=fp32,bf16,recompute,bf16+recompute] \
      [--jit_compile] [--output_json=F]

Each (crop size, variant) runs in its own Python process, so that the dtype
policy starts clean and the peak resident memory (``ru_maxrss``) belongs to that
configuration alone. The process builds the model of the gin files with
``InputConfig.crop_size = (s, s)``, the experiment's loss and optimizer group, and trains on
one synthetic batch of ``--batch_size`` images (random pixels; a stuff mask, a
thing rectangle and a void strip as ground truth, padded to
``InputConfig.max_num_masks`` slots). The first ``--warmup`` steps (tracing,
compilation, allocation) are left out; images/s is ``steps * batch / seconds``
of the next ``--steps`` steps. Peak memory: the accelerator's peak
(``tf.config.experimental.get_memory_info``) when there is a GPU/TPU, else the
process's peak RSS (which includes TensorFlow itself, ~0.5 GiB).

Variants: ``fp32``; ``bf16`` (``ExperimentConfig.mixed_precision = 'bfloat16'``);
``fp16`` (float16 with the dynamic loss scale); ``recompute``
(``MaskTransformer.recompute`` = all three parts); combinations joined by ``+``.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

_PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}
_ALL_PARTS = "('pixel_encoder', 'pixel_decoder', 'transformer_decoder')"


def _variant_bindings(variant: str) -> List[str]:
  bindings = []
  for token in variant.split("+"):
    if token in _PRECISIONS:
      value = _PRECISIONS[token]
      bindings.append(f"ExperimentConfig.mixed_precision = {value!r}")
    elif token == "recompute":
      bindings.append(f"MaskTransformer.recompute = {_ALL_PARTS}")
      # Drop path inside a recomputed part must replay its masks, which needs the
      # seeded (stateful) generators.
      bindings.append("ExperimentConfig.seed = 0")
    else:
      raise ValueError(f"unknown variant token {token!r} in {variant!r}")
  return bindings


def _synthetic_batch(batch_size: int, size: int, num_masks: int, num_classes: int):
  """One padded ground-truth batch: stuff class 0, a thing of class 1, void strip."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import common  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  mask_id = np.zeros((batch_size, size, size), np.int32)
  mask_id[:, size // 4: size // 2, size // 4: size // 2] = 1
  mask_id[:, -max(size // 32, 1):, :] = -1
  classes = np.full((batch_size, num_masks), -1, np.int32)
  classes[:, :2] = [0, min(1, num_classes - 1)]
  is_thing = np.zeros((batch_size, num_masks), bool)
  is_thing[:, 1] = True
  semantic = np.where(mask_id >= 0, classes[0][np.maximum(mask_id, 0)], 255).astype(np.int32)
  return {
      common.IMAGE: rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
      common.GT_MASK_ID: mask_id, common.GT_CLASSES: classes, common.GT_IS_THING: is_thing,
      common.GT_SEMANTIC: semantic,
      common.GT_SEMANTIC_WEIGHT: (semantic != 255).astype(np.float32),
  }


def _peak_memory_gib() -> Dict[str, float]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  result = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
  for kind in ("GPU", "TPU"):
    if tf.config.list_logical_devices(kind):
      try:
        info = tf.config.experimental.get_memory_info(f"{kind}:0")
        result["peak_device_gib"] = info["peak"] / 2 ** 30
      except (ValueError, RuntimeError):
        pass
  return result


def _num_masks() -> int:
  """Ground-truth slots: the recipe's InputConfig.max_num_masks."""
  from deeplab_panoptic.data import input_config  # pylint: disable=g-import-not-at-top
  return input_config.InputConfig().max_num_masks


def run_one(gin_files: List[str], gin_params: List[str], size: int, variant: str,
            batch_size: int, steps: int, warmup: int, jit_compile: bool) -> dict:
  """Builds and times one configuration in this process; returns its row."""
  import gin  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training import experiment  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  params = list(gin_params) + [f"InputConfig.crop_size = ({size}, {size})",
                               f"ExperimentConfig.eval_input_size = ({size}, {size})",
                               f"ExperimentConfig.train_batch_size = {batch_size}",
                               f"ExperimentConfig.jit_compile = {jit_compile}"]
  params += _variant_bindings(variant)
  main_lib.parse_gin(gin_files, params)
  start = time.perf_counter()
  exp = experiment.Experiment("/tmp/unused_train_step_benchmark", "train")
  num_masks = _num_masks()
  batch = _synthetic_batch(batch_size, size, int(num_masks), exp.info.num_classes)
  dataset = tf.data.Dataset.from_tensors(batch).repeat()
  optimizer = exp._optimizer()  # pylint: disable=protected-access
  trainer = trainer_lib.PanopticTrainer(
      exp.strategy, exp.model, exp.config.loss(), optimizer,
      exp.strategy.experimental_distribute_dataset(dataset), batch_size,
      warmup + steps, jit_compile=jit_compile)
  build_s = time.perf_counter() - start
  start = time.perf_counter()
  trainer.train(tf.constant(warmup))
  warmup_s = time.perf_counter() - start
  start = time.perf_counter()
  logs = trainer.train(tf.constant(steps))
  seconds = time.perf_counter() - start
  return {
      "crop": size, "variant": variant, "batch_size": batch_size, "steps": steps,
      "jit_compile": jit_compile, "images_per_s": steps * batch_size / seconds,
      "step_s": seconds / steps, "build_s": build_s, "first_steps_s": warmup_s,
      "loss": float(logs["losses/total_loss"]), **_peak_memory_gib(),
      "params": int(sum(v.shape.num_elements() for v in exp.model.trainable_variables)),
  }


def _table(rows: List[dict]) -> str:
  lines = ["| crop | variant | batch | images/s | s/step | peak RSS GiB | peak device GiB | loss |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['crop']} | {r['variant']} | {r['batch_size']} | failed: "
                   f"{r['error']} | | | | |")
      continue
    device = f"{r['peak_device_gib']:.2f}" if "peak_device_gib" in r else "-"
    lines.append(f"| {r['crop']} | {r['variant']} | {r['batch_size']} | "
                 f"{r['images_per_s']:.3f} | {r['step_s']:.2f} | {r['peak_rss_gib']:.2f} | "
                 f"{device} | {r['loss']:.3f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gin_file", action="append", required=True)
  parser.add_argument("--gin_param", action="append", default=[])
  parser.add_argument("--crop_sizes", default="641,1025,1281")
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--variants", default="fp32,bf16,recompute,bf16+recompute")
  parser.add_argument("--jit_compile", action="store_true")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per configuration")
  parser.add_argument("--output_json", default=None)
  parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args._child:  # pylint: disable=protected-access
    size, variant = args._child.split(":")  # pylint: disable=protected-access
    row = run_one(args.gin_file, args.gin_param, int(size), variant, args.batch_size,
                  args.steps, args.warmup, args.jit_compile)
    print("ROW " + json.dumps(row), flush=True)
    return

  rows = []
  for size in [int(s) for s in args.crop_sizes.split(",")]:
    for variant in args.variants.split(","):
      _variant_bindings(variant)  # Fails early on a typo.
      command = [sys.executable, os.path.abspath(__file__), f"--_child={size}:{variant}",
                 f"--batch_size={args.batch_size}", f"--steps={args.steps}",
                 f"--warmup={args.warmup}"]
      command += [f"--gin_file={f}" for f in args.gin_file]
      command += [f"--gin_param={p}" for p in args.gin_param]
      if args.jit_compile:
        command.append("--jit_compile")
      try:
        proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=args.timeout, check=False)
        found = [l for l in proc.stdout.splitlines() if l.startswith("ROW ")]
        if found:
          row = json.loads(found[-1][4:])
        else:
          tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
          # A process killed for memory ends with -9 and says nothing.
          row = {"crop": size, "variant": variant, "batch_size": args.batch_size,
                 "error": f"exit {proc.returncode}: {tail[:200]}"}
      except subprocess.TimeoutExpired:
        row = {"crop": size, "variant": variant, "batch_size": args.batch_size,
               "error": f"over {args.timeout} s"}
      rows.append(row)
      print(json.dumps(row), flush=True)
  print(f"\nhost: {platform.node()} ({os.cpu_count()} CPUs), load {os.getloadavg()[0]:.2f}, "
        f"gin: {' '.join(args.gin_file)}")
  print(_table(rows))
  if args.output_json:
    with open(args.output_json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
