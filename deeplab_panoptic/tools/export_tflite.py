"""Command line of the TFLite export: restores a run's checkpoint, writes ``.tflite``.

  python -m deeplab_panoptic.tools.export_tflite \\
      --gin_file=experiments/quickstart/kmax_deeplab_shapes.gin \\
      --model_dir=runs/quickstart [--output=runs/quickstart/tflite/model.tflite]

The conversion itself is ``deeplab_panoptic.export.tflite``; this tool is the
orchestration above it (gin, the experiment, the checkpoint), kept out of the
export layer.
"""

import os
import sys
from typing import List, Optional

import tensorflow as tf

from deeplab_panoptic import main as main_lib
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.export import tflite
from deeplab_panoptic.training import experiment


def main(argv: Optional[List[str]] = None) -> int:
  """Restores ``--model_dir``'s latest checkpoint and writes the ``.tflite`` file."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="TFLite export of a trained model.")
  parser.add_argument("--gin_file", action="append", required=True)
  parser.add_argument("--gin_param", action="append", default=[])
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--output", default=None,
                      help="Default: <model_dir>/tflite/model.tflite.")
  parser.add_argument("--select_tf_ops", action="store_true")
  parser.add_argument("--dynamic_range_quantization", action="store_true",
                      help="int8 weights, float inputs / outputs.")
  args = parser.parse_args(argv)
  try:
    main_lib.parse_gin(args.gin_file, args.gin_param)
    exp = experiment.Experiment(args.model_dir, "export")
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    exp._restore(exp._checkpoint(None, step))  # pylint: disable=protected-access
    module = saved_model.PanopticExportModule(exp.model, exp.postprocessor,
                                              dataset_info=exp.info)
    path = tflite.export_tflite(module, args.output or os.path.join(args.model_dir, "tflite",
                                                             "model.tflite"),
                         args.select_tf_ops, args.dynamic_range_quantization)
  except (ValueError, FileNotFoundError, main_lib.UsageError) as e:
    print(f"tflite: error: {e}", file=sys.stderr)
    return 1
  print(f"tflite | step {int(step.numpy())} | written to {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
