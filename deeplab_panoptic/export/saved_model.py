"""SavedModel export: uint8 images in, panoptic maps at the original resolution out."""

import os
import shutil
from typing import Callable, Dict, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.data import preprocessing


def fit_and_pad(images: tf.Tensor, input_size: Tuple[int, int]):
  """The evaluation preprocessing of the reader, on a batch of same-size images.

  Images larger than ``input_size`` are shrunk bilinearly (keeping the aspect
  ratio, with the same float32 arithmetic as ``preprocessing.resize_to_fit``),
  padded bottom/right with raw value 127.5 and normalised to [-1, 1].

  Args:
    images: uint8 ``[batch, height, width, 3]``.
    input_size: static ``(H, W)`` of the model input.

  Returns:
    ``(inputs [batch, H, W, 3] float32, (resized_height, resized_width))``.
  """
  height, width = input_size
  x = tf.cast(images, tf.float32)
  fshape = tf.cast(tf.shape(images)[1:3], tf.float32)
  factor = tf.minimum(height / fshape[0], width / fshape[1])

  def shrink():
    size = tf.cast(tf.round(fshape * factor), tf.int32)
    size = tf.clip_by_value(size, 1, tf.constant([height, width]))
    return tf.image.resize(x, size, method=tf.image.ResizeMethod.BILINEAR)

  x = tf.cond(factor < 1.0, shrink, lambda: x)
  rh, rw = tf.shape(x)[1], tf.shape(x)[2]
  x = tf.pad(x, [[0, 0], [0, height - rh], [0, width - rw], [0, 0]],
             constant_values=preprocessing.IMAGE_PAD_VALUE)
  x = preprocessing.normalize_image(x)
  return tf.ensure_shape(x, [None, height, width, 3]), (rh, rw)


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
