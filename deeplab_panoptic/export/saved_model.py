"""SavedModel export: uint8 images in, panoptic maps at the original resolution out."""

import os
import shutil
from typing import Callable, Dict, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.data import preprocessing


def fit_and_pad(images: tf.Tensor, input_size: Tuple[int, int],
                eval_resize: str = preprocessing.FIT_SHRINK_ONLY, short_side: int = 800,
                max_long_side: int = 1333):
  """The reader's evaluation preprocessing, on a batch of same-size images.

  The resized size comes from ``preprocessing.eval_resize_size`` (the function the
  reader uses), the image is resized bilinearly only when that size differs, padded
  bottom/right with raw value 127.5 and normalised to [-1, 1].

  Args:
    images: uint8 ``[batch, height, width, 3]``.
    input_size: static ``(H, W)`` of the model input.
    eval_resize, short_side, max_long_side: as ``build_dataset``'s eval options.

  Returns:
    ``(inputs [batch, H, W, 3] float32, (resized_height, resized_width))``.
  """
  height, width = input_size
  x = tf.cast(images, tf.float32)
  shape = tf.shape(images)[1:3]
  size = preprocessing.eval_resize_size(shape, (height, width), eval_resize, short_side,
                                        max_long_side)
  x = tf.cond(tf.reduce_all(tf.equal(size, shape)), lambda: x,
              lambda: tf.image.resize(x, size, method=tf.image.ResizeMethod.BILINEAR))
  rh, rw = size[0], size[1]
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
    eval_resize, short_side, max_long_side: the evaluation resize of the reader
      (``build_dataset``'s ``eval_resize``, ``eval_short_side``, ``max_long_side``).
  """

  def __init__(self, model: keras.Model, postprocessor: Callable,
               input_size: Sequence[int] = gin.REQUIRED,
               eval_resize: str = preprocessing.FIT_SHRINK_ONLY, short_side: int = 800,
               max_long_side: int = 1333):
    super().__init__(name="panoptic_export")
    self.model = model
    self.postprocessor = postprocessor
    self.input_size = (int(input_size[0]), int(input_size[1]))
    self._resize = (eval_resize, short_side, max_long_side)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  def serve(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    inputs, (rh, rw) = fit_and_pad(images, self.input_size, *self._resize)
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
