"""Panoptic inference at the model input size and its return to the original resolution.

The evaluator and the exported SavedModel both call these two functions, so the
maps scored by evaluation are, pixel for pixel, the maps a served model returns:

1. :func:`infer_at_input_size`: model -> panoptic postprocessor on the padded
   model inputs ``[B, H, W, 3]``; the maps come out at ``(H, W)``.
2. :func:`restore_original_resolution`: crops each map's valid (unpadded) region,
   resizes it (nearest) to the image's original size and pads the batch with void
   to the largest original size.

Both are TensorFlow ops; the evaluator runs (1) on the replicas and (2) on the
host CPU, the SavedModel runs both in its serving graph.
"""

from typing import Callable, Dict, Sequence

import tensorflow as tf
import tf_keras as keras


def model_outputs(model: keras.Model, inputs: tf.Tensor) -> Dict[str, tf.Tensor]:
  """The model's inference outputs, floating ones cast to float32.

  Args:
    model: the model.
    inputs: float32 ``[B, H, W, 3]`` normalised, padded model inputs.

  Returns:
    The model's output dict (``common.PRED_*``).
  """
  outputs = model(inputs, training=False)
  # Under a mixed-precision policy the model computes in bfloat16 / float16; the
  # softmaxes and thresholds of the postprocessor run in float32.
  return tf.nest.map_structure(
      lambda t: tf.cast(t, tf.float32)
      if isinstance(t, tf.Tensor) and t.dtype.is_floating and t.dtype != tf.float32 else t,
      outputs)


def infer_at_input_size(model: keras.Model, postprocessor: Callable,
                        inputs: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Runs the model in inference mode and its postprocessor at the input size.

  Floating outputs are cast to float32 first (as the trainer's losses read them).

  Args:
    model: the mask transformer.
    postprocessor: ``(outputs, (H, W)) -> dict`` of ``[B, H, W]`` maps and
      ``[B, N]`` per-slot tensors (``common.PANOPTIC``, ``SEMANTIC``, ...).
    inputs: float32 ``[B, H, W, 3]`` normalised, padded model inputs with a static
      ``H, W``.

  Returns:
    The postprocessor's dict, maps at ``(H, W)``.
  """
  size = (int(inputs.shape[1]), int(inputs.shape[2]))
  return postprocessor(model_outputs(model, inputs), size)


def restore_original_resolution(maps: tf.Tensor, resized: tf.Tensor, original: tf.Tensor,
                                void: Sequence[int], dtype: tf.DType = tf.int32) -> tf.Tensor:
  """Undoes the evaluation preprocessing (resize + bottom/right padding) of int maps.

  Nearest-neighbour resizing of integer maps involves no float arithmetic on the
  labels, so the result depends only on the sizes.

  Args:
    maps: int ``[B, H, W, C]`` maps at the model input size (e.g. panoptic,
      semantic, instance stacked on the last axis; or ``K`` binary instance masks
      as uint8, a quarter of the int32 memory).
    resized: int32 ``[B, 2]`` (height, width) of the valid region of each input;
      every entry must be >= 1.
    original: int32 ``[B, 2]`` original (height, width) of each image; >= 1.
    void: ``C`` values that fill each channel outside an image (the padding of a
      batch whose images differ in size).
    dtype: the integer type of ``maps`` and of the result (int32 or uint8).

  Returns:
    ``dtype`` ``[B, max original height, max original width, C]``: image ``b``'s
    maps in ``[:original[b, 0], :original[b, 1]]``, ``void`` elsewhere.
  """
  maps = tf.convert_to_tensor(maps, dtype)
  resized = tf.convert_to_tensor(resized, tf.int32)
  original = tf.convert_to_tensor(original, tf.int32)
  void = tf.constant(list(void), dtype)
  out_size = tf.reduce_max(original, axis=0)

  def restore(args):
    one_map, valid, size = args
    one_map = tf.image.resize(one_map[:valid[0], :valid[1]], size, method="nearest")
    # A per-channel pad value needs a mask rather than tf.pad's single constant.
    padded = tf.pad(one_map, [[0, out_size[0] - size[0]], [0, out_size[1] - size[1]],
                              [0, 0]])
    rows = tf.range(out_size[0])[:, tf.newaxis] < size[0]
    cols = tf.range(out_size[1])[tf.newaxis, :] < size[1]
    return tf.where(tf.logical_and(rows, cols)[..., tf.newaxis], padded, void)

  return tf.map_fn(restore, (maps, resized, original),
                   fn_output_signature=tf.TensorSpec([None, None, None], dtype))
