"""SavedModel export: uint8 images in, panoptic maps at the original resolution out."""

import os
import shutil
from typing import Callable, Dict, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common


def fit_and_pad(images: tf.Tensor, input_size: Tuple[int, int]):
  """Resizes images down to fit ``input_size`` (keeping aspect) and pads with 0.

  This is the evaluation preprocessing of the reader: images are normalised to
  [-1, 1], shrunk only when larger than the input size, and padded bottom/right.

  Args:
    images: uint8 ``[batch, height, width, 3]``.
    input_size: static ``(H, W)`` of the model input.

  Returns:
    ``(padded [batch, H, W, 3] float32, (resized_height, resized_width))``.
  """
  h = tf.shape(images)[1]
  w = tf.shape(images)[2]
  scale = tf.minimum(1.0, tf.minimum(input_size[0] / tf.cast(h, tf.float64),
                                     input_size[1] / tf.cast(w, tf.float64)))
  rh = tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32)
  rw = tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32)
  x = tf.cast(images, tf.float32)
  x = tf.cond(scale < 1.0,
              lambda: tf.image.resize(x, tf.stack([rh, rw]), method="bilinear"),
              lambda: x)
  x = x / 127.5 - 1.0
  x = tf.image.pad_to_bounding_box(x, 0, 0, input_size[0], input_size[1])
  return tf.ensure_shape(x, [None, input_size[0], input_size[1], 3]), (rh, rw)


@gin.configurable(denylist=["model", "postprocessor"])
class PanopticExportModule(tf.Module):
  """Serving module around a trained model and its panoptic postprocessor.

  Signature ``serving_default``: ``images`` uint8 ``[batch, height, width, 3]`` (any
  size, batch >= 1) -> ``panoptic``, ``semantic``, ``instance`` int32
  ``[batch, height, width]`` at the input resolution, and per-slot
  ``segment_classes`` int32, ``segment_scores`` float32 ``[batch, N]``.

  Args:
    model: the trained model.
    postprocessor: ``(outputs, (H, W)) -> dict``.
    input_size: model input size (H, W), the evaluation crop size.
  """

  def __init__(self, model: keras.Model, postprocessor: Callable,
               input_size: Sequence[int] = gin.REQUIRED):
    super().__init__(name="panoptic_export")
    self.model = model
    self.postprocessor = postprocessor
    self.input_size = (int(input_size[0]), int(input_size[1]))

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  def serve(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    inputs, (rh, rw) = fit_and_pad(images, self.input_size)
    outputs = self.model(inputs, training=False)
    predictions = self.postprocessor(outputs, self.input_size)
    result = {}
    for key in (common.PANOPTIC, common.SEMANTIC, common.INSTANCE):
      valid = predictions[key][:, :rh, :rw, None]
      valid = tf.image.resize(valid, tf.stack([height, width]), method="nearest")
      result[key] = valid[..., 0]
    result[common.SEGMENT_CLASSES] = predictions[common.SEGMENT_CLASSES]
    result[common.SEGMENT_SCORES] = predictions[common.SEGMENT_SCORES]
    return result


def export_saved_model(module: PanopticExportModule, export_dir: str) -> str:
  """Writes the SavedModel to ``export_dir`` through a temporary directory.

  Returns:
    ``export_dir``.
  """
  tmp_dir = export_dir.rstrip("/") + ".tmp"
  if tf.io.gfile.exists(tmp_dir):
    tf.io.gfile.rmtree(tmp_dir)
  tf.saved_model.save(module, tmp_dir, signatures={"serving_default": module.serve})
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rmtree(export_dir)
  tf.io.gfile.rename(tmp_dir, export_dir)
  return export_dir
