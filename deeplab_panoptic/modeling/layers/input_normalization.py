"""Per-channel input normalisation for encoders trained on normalised images.

The library's images come in [-1, 1] (``x = pixel / 127.5 - 1``). Weights trained
with torchvision's / Hugging Face's preprocessing (ImageNet classifiers, and the
Mask2Former checkpoints built on them) want ``(pixel / 255 - mean) / std`` per
channel instead; this layer converts one into the other inside the encoder, so
the data pipeline stays the same for every model. The values live in gin
(``configs/models/imagenet_input_normalization.gin``), never in code.
"""

from typing import Optional, Sequence

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras


@gin.configurable
class InputNormalization(keras.layers.Layer):
  """``[B, H, W, C]`` in [-1, 1] -> ``((x + 1) / 2 - mean) / std``, same shape.

  Args:
    mean: per-channel mean of the [0, 1] images the weights were trained on.
    std: per-channel standard deviation (all positive).
  """

  def __init__(self, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, **kwargs):
    super().__init__(**kwargs)
    if mean is None or std is None:
      raise ValueError("InputNormalization.mean and InputNormalization.std must be bound "
                       "in gin (e.g. configs/models/imagenet_input_normalization.gin) "
                       "when an encoder's input_normalization is on.")
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    if mean.shape != std.shape or mean.ndim != 1 or np.any(std <= 0):
      raise ValueError(f"InputNormalization: mean {mean.tolist()} and std {std.tolist()} "
                       "must be one value per channel each, std positive.")
    self.mean, self.std = mean, std
    # ((x + 1) / 2 - mean) / std folded into one multiply-add.
    self._scale = (0.5 / std).astype(np.float32)
    self._offset = ((0.5 - mean) / std).astype(np.float32)

  def call(self, images: tf.Tensor) -> tf.Tensor:
    if images.shape[-1] != self._scale.shape[0]:
      raise ValueError(f"InputNormalization: images have {images.shape[-1]} channels, "
                       f"mean/std have {self._scale.shape[0]}.")
    return (images * tf.cast(self._scale, images.dtype)
            + tf.cast(self._offset, images.dtype))
