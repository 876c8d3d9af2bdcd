"""Atrous spatial pyramid pooling and ReMaX's per-stage semantic head built on it."""

from typing import Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers import conv


class ASPP(keras.layers.Layer):
  """Atrous spatial pyramid pooling: 1x1, atrous 3x3 branches, image pooling.

  Input ``[batch, h, w, c]``; output ``[batch, h, w, filters]``.
  """

  def __init__(self, filters: int, atrous_rates: Sequence[int], activation: str,
               dropout: float, **kwargs):
    super().__init__(**kwargs)
    self._branches = [conv.ConvBN(filters, 1, activation=activation, name="conv1x1")]
    for r in atrous_rates:
      self._branches.append(_AtrousConvBN(filters, r, activation, name=f"atrous{r}"))
    self._pool_conv = conv.ConvBN(filters, 1, activation=activation, name="pool_conv")
    self._project = conv.ConvBN(filters, 1, activation=activation, name="project")
    self._dropout = keras.layers.Dropout(dropout)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    outs = [b(x, training=training) for b in self._branches]
    pooled = self._pool_conv(tf.reduce_mean(x, axis=[1, 2], keepdims=True), training=training)
    outs.append(tf.broadcast_to(pooled, tf.shape(outs[0])))
    y = self._project(tf.concat(outs, axis=-1), training=training)
    return self._dropout(y, training=training)


class _AtrousConvBN(keras.layers.Layer):
  """3x3 atrous conv -> BN -> activation."""

  def __init__(self, filters: int, rate: int, activation: str, **kwargs):
    super().__init__(**kwargs)
    self._conv = keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=rate,
                                     use_bias=False, kernel_initializer="he_normal")
    self._bn = conv.batch_norm()
    self._act = conv.get_activation(activation)

  def call(self, x, training=None):
    return self._act(self._bn(self._conv(x), training=training))


@gin.configurable
class ReMaXSemanticHead(base.FeatureHead):
  """ReMaX per-stage semantic head: ASPP then a 1x1 conv to classes (training-only).

  ReMaX (Sun et al., arXiv:2306.17319, §3.1, §4) puts this head on the key of a k-means
  cross-attention, x_sem, and uses its logits m_sem only for ReMask and the
  per-stage semantic loss, so the whole branch is dropped at inference.

  Input: x_sem ``[batch, h, w, c]`` (already activated: the layer's bottleneck
  pixel feature). Output: m_sem ``[batch, h, w, num_classes]``.

  Args:
    num_classes: N_C, number of semantic classes (without void).
    aspp_dim: width of the ASPP branches and projection.
    atrous_rates: ASPP atrous rates.
    dropout: dropout after ASPP.
    activation: activation function.
  """

  def __init__(self, num_classes: int = gin.REQUIRED, aspp_dim: int = 256,
               atrous_rates: Sequence[int] = (6, 12, 18), dropout: float = 0.1,
               activation: str = "gelu", **kwargs):
    super().__init__(**kwargs)
    self._aspp = ASPP(aspp_dim, atrous_rates, activation, dropout, name="aspp")
    self._logits = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        name="logits")

  def call(self, x_sem: tf.Tensor, training=None) -> tf.Tensor:
    return self._logits(self._aspp(x_sem, training=training))
