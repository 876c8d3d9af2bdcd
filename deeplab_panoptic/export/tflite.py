r"""TFLite export of a trained model: fixed-size uint8 image in, panoptic maps out.

  python -m deeplab_panoptic.export.tflite \
      --gin_file=experiments/quickstart/kmax_deeplab_shapes.gin \
      --model_dir=runs/quickstart [--output=runs/quickstart/tflite/model.tflite]

The TFLite model has one signature, ``serving_default``: ``images`` uint8
``[1, H, W, 3]`` with ``(H, W)`` exactly the model input size
(``PanopticExportModule.input_size``) -> ``panoptic``, ``semantic``,
``instance`` int32 ``[1, H, W]`` and per-slot ``segment_classes``,
``segment_scores``, ``segment_areas`` ``[1, N]``, all at the input size. Unlike
the SavedModel it leaves resizing to the application (mobile apps resize with
the camera pipeline): resize or pad the picture to ``H x W`` first and resize
the maps back (nearest). Without a dynamic shape or a loop left in the graph,
the kMaX family converts with TFLite built-in ops only (checked by
``tests/export/test_tflite.py``); ``select_tf_ops=True`` allows TensorFlow ops
for a family that needs them (the app then links the Flex delegate).
"""

import os
import sys
from typing import Dict, List, Optional

import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.data import preprocessing
from deeplab_panoptic.export import saved_model


def tflite_function(module: saved_model.PanopticExportModule
                    ) -> tf.types.experimental.ConcreteFunction:
  """The fixed-size inference function that TFLite converts.

  Args:
    module: the export module (model, postprocessor, input size).

  Returns:
    A concrete function ``images uint8 [1, H, W, 3] -> dict`` (see the module doc).
  """
  height, width = module.input_size

  @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.uint8,
                                              name="images")])
  def serve(images: tf.Tensor) -> Dict[str, tf.Tensor]:
    inputs = preprocessing.normalize_image(tf.cast(images, tf.float32))
    predictions = module.postprocessor(module.model(inputs, training=False),
                                       module.input_size)
    return {key: predictions[key] for key in (
        common.PANOPTIC, common.SEMANTIC, common.INSTANCE, common.SEGMENT_CLASSES,
        common.SEGMENT_SCORES, common.SEGMENT_AREAS)}

  return serve.get_concrete_function()


def export_tflite(module: saved_model.PanopticExportModule, path: str,
                  select_tf_ops: bool = False, dynamic_range_quantization: bool = False) -> str:
  """Converts the model to a ``.tflite`` file (temporary name, then rename).

  Args:
    module: the export module.
    path: the ``.tflite`` file to write.
    select_tf_ops: also allow TensorFlow ops (Flex delegate) besides TFLite's.
    dynamic_range_quantization: store the weights as int8 (about 4x smaller) and
      let the kernels that support it quantise activations on the fly; inputs,
      outputs and the other ops stay float (TFLite ``Optimize.DEFAULT`` with no
      representative dataset).

  Returns:
    ``path``.

  Raises:
    ValueError: naming the model when the conversion fails.
  """
  function = tflite_function(module)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
  ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if select_tf_ops:
    ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
  converter.target_spec.supported_ops = ops
  if dynamic_range_quantization:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  try:
    data = converter.convert()
  except Exception as e:  # The converter raises ConverterError and others.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"TFLite conversion of {module.model.name} failed"
                     f"{'' if select_tf_ops else ' with built-in ops only (try --select_tf_ops)'}"
                     f": {first}") from e
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "wb") as f:
    f.write(data)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def main(argv: Optional[List[str]] = None) -> int:
  """Restores ``--model_dir``'s latest checkpoint and writes the ``.tflite`` file."""
  import argparse  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training import experiment  # pylint: disable=g-import-not-at-top
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
    path = export_tflite(module, args.output or os.path.join(args.model_dir, "tflite",
                                                             "model.tflite"),
                         args.select_tf_ops, args.dynamic_range_quantization)
  except (ValueError, FileNotFoundError, main_lib.UsageError) as e:
    print(f"tflite: error: {e}", file=sys.stderr)
    return 1
  print(f"tflite | step {int(step.numpy())} | written to {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
