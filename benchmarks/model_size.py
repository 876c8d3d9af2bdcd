"""Parameters and multiply-adds of recipes' models, as ``--mode=summary`` counts them.

Usage:
  python benchmarks/model_size.py --gin_file experiments/coco/remax_t_641_50k.gin \
      [--gin_file ...] [--eval_size 801,1201]

Prints, per recipe, ``params`` (inference model, training-only heads excluded),
``train_params`` and ``gmacs`` at the recipe's evaluation size (or
``--eval_size``), with ``deeplab_panoptic.training.model_summary`` — the same
functions ``main.py --mode=summary`` prints. Unlike ``--mode=summary`` it builds
the model by tracing it once (training mode, so the training-only heads exist)
instead of running two forward passes at full size, and it needs no dataset
files: a 1281x1281 ResNet-50 or ConvNeXt model is counted in well under a minute
on two CPU cores. Shapes are static: models with axial attention can only be
counted at the size they are built at, which is the one counted here.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
from deeplab_panoptic.modeling.meta_arch import MaskTransformer  # pylint: disable=g-import-not-at-top
from deeplab_panoptic.training import model_summary  # pylint: disable=g-import-not-at-top
from deeplab_panoptic.training.experiment import ExperimentConfig  # pylint: disable=g-import-not-at-top


def model_size(gin_file: str, gin_params, eval_size=None) -> dict:
  """``{"params", "train_params", "gmacs", "eval_size"}`` of one recipe's model."""
  gin.clear_config()
  params = list(gin_params)
  if eval_size is not None:
    params.append(f"ExperimentConfig.eval_input_size = {tuple(eval_size)}")
  main_lib.parse_gin([gin_file], params)
  model = MaskTransformer()
  height, width = tuple(ExperimentConfig().eval_input_size)
  spec = tf.TensorSpec([1, height, width, 3], tf.float32)
  # Tracing creates every variable (the training-only heads run in training mode)
  # without computing anything.
  tf.function(lambda x: model(x, training=True)).get_concrete_function(spec)
  counts = model_summary.parameter_counts(model)
  counts["gmacs"] = model_summary.count_macs(model, (height, width)) / 1e9
  counts["eval_size"] = (height, width)
  return counts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gin_file", action="append", required=True)
  parser.add_argument("--gin_param", action="append", default=[])
  parser.add_argument("--eval_size", default=None,
                      help="H,W to count at instead of the recipe's evaluation size.")
  args = parser.parse_args()
  eval_size = tuple(int(v) for v in args.eval_size.split(",")) if args.eval_size else None
  os.chdir(REPO_ROOT)  # gin includes are relative to the repository.
  print("| recipe | eval size | params | train_params | GMACs |")
  print("| --- | --- | --- | --- | --- |")
  for gin_file in args.gin_file:
    c = model_size(gin_file, args.gin_param, eval_size)
    print(f"| {os.path.basename(gin_file)} | {c['eval_size'][0]}x{c['eval_size'][1]} | "
          f"{c['params']:,} | {c['train_params']:,} | {c['gmacs']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
