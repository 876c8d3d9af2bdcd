r"""TFLite export of a trained model: fixed-size uint8 image in, the declared maps out.

  python -m deeplab_panoptic.tools.export_tflite \
      --gin_file=experiments/quickstart/kmax_deeplab_shapes.gin \
      --model_dir=runs/quickstart [--output=runs/quickstart/tflite/model.tflite]

The TFLite model has one signature, ``serving_default``: ``images`` uint8
``[1, H, W, 3]`` with ``(H, W)`` exactly the model input size
(``PanopticExportModule.input_size``) -> the postprocessor's declared results
(``postprocess/base.py``; for a panoptic model ``panoptic``, ``semantic``,
``instance`` int32 ``[1, H, W]`` and per-slot ``segment_classes``,
``segment_scores``, ``segment_areas`` ``[1, N]``), all at the input size. Unlike
the SavedModel it leaves resizing to the application (mobile apps resize with
the camera pipeline): resize or pad the picture to ``H x W`` first and resize
the maps back (nearest). Without a dynamic shape or a loop left in the graph,
the kMaX family converts with TFLite built-in ops only (checked by
``tests/export/test_tflite.py``); ``select_tf_ops=True`` allows TensorFlow ops
for a family that needs them (the app then links the Flex delegate).
"""

from typing import Dict

import tensorflow as tf

from deeplab_panoptic.data import preprocessing
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.utils import files


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
    # The declared results only (postprocess/base.py).
    return {key: predictions[key] for key in module.postprocessor.output_keys}

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
  files.write_bytes_atomic(path, data)
  return path
