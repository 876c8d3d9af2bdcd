"""Prediction heads: class, mask embedding, pixel embedding, mask logits, semantic."""

import math
from typing import Dict, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import utils
from deeplab_panoptic.modeling.layers import conv


@gin.configurable
class MaskTransformerPredictor(keras.layers.Layer):
  """Turns pixel features and mask-slot embeddings into class and mask logits.

  Pixel embedding g: 5x5 depthwise-separable conv -> 1x1 conv to ``embedding_dim``
  -> BN -> L2 normalisation. Mask kernel f: dense to ``embedding_dim`` -> BN.
  Mask logits: ``f . g`` followed by one batch norm shared by all logits (MaX-DeepLab
  eq. 15 with BN on f.g, which avoids careful initialisation). Class logits: dense
  to ``num_classes + 1``, the void logit starting with a prior probability.

  Inputs: pixel features ``[batch, h, w, c]`` (non-activated), class and mask
  embeddings ``[batch, N, d]``.
  Outputs: PRED_CLASS_LOGITS ``[batch, N, num_classes + 1]``, PRED_MASK_LOGITS
  ``[batch, h, w, N]``, PRED_PIXEL_EMBEDDING ``[batch, h, w, embedding_dim]``.

  Args:
    num_classes: number of semantic classes (without void).
    embedding_dim: D, the width of pixel and mask embeddings.
    pixel_head_dim: width of the separable conv in the pixel-embedding head.
    void_prior_probability: initial void probability of every slot.
    mask_logit_gamma_init: initial scale of the shared mask-logit batch norm.
    activation: activation function.
    activate_input: activate the pixel feature before the pixel-embedding head.
      deeplab2 does not (its kMaX layers pass an already activated feature to the
      auxiliary predictors and the raw decoder output to the final one).
  """

  def __init__(self, num_classes: int = gin.REQUIRED, embedding_dim: int = 128,
               pixel_head_dim: int = 256, void_prior_probability: float = 0.9,
               mask_logit_gamma_init: float = 0.1, activation: str = "gelu",
               activate_input: bool = True, **kwargs):
    super().__init__(**kwargs)
    self._act = conv.get_activation(activation) if activate_input else tf.identity
    self._pixel_conv = conv.ConvBN(pixel_head_dim, 5, separable=True,
                                   activation=activation, name="pixel_conv")
    self._pixel_proj = keras.layers.Conv2D(
        embedding_dim, 1, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        name="pixel_proj")
    self._pixel_bn = conv.batch_norm(name="pixel_bn")
    self._mask_kernel = keras.layers.Dense(embedding_dim, use_bias=False,
                                           kernel_initializer="he_normal", name="mask_kernel")
    self._mask_kernel_bn = conv.batch_norm(name="mask_kernel_bn")
    # Softmax prior: p(void) = e^b / (e^b + num_classes) = void_prior_probability.
    void_bias = math.log(num_classes * void_prior_probability / (1.0 - void_prior_probability))
    self._class = keras.layers.Dense(
        num_classes + 1, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        bias_initializer=keras.initializers.Constant([0.0] * num_classes + [void_bias]),
        name="class")
    self._mask_logit_bn = conv.batch_norm(gamma_init=mask_logit_gamma_init,
                                          name="mask_logit_bn")

  def call(self, pixel_feature: tf.Tensor, class_embedding: tf.Tensor,
           mask_embedding: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    g = self._pixel_conv(self._act(pixel_feature), training=training)
    g = self._pixel_bn(self._pixel_proj(g), training=training)
    g = tf.math.l2_normalize(g, axis=-1)
    f = self._mask_kernel_bn(self._mask_kernel(mask_embedding), training=training)
    logits = tf.einsum("bhwd,bnd->bhwn", g, f)
    logits = self._mask_logit_bn(logits[..., None], training=training)[..., 0]
    return {
        common.PRED_CLASS_LOGITS: self._class(class_embedding),
        common.PRED_MASK_LOGITS: logits,
        common.PRED_PIXEL_EMBEDDING: g,
    }


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
class SemanticHead(keras.layers.Layer):
  """Panoptic-DeepLab style semantic decoder and head (training-only auxiliary).

  ASPP on the coarsest encoder feature, then for each low-level endpoint: project it
  (1x1 conv), upsample the running feature to it, concatenate and fuse with a 5x5
  depthwise-separable conv; finally a 5x5 separable conv and a 1x1 conv to classes.

  Input: encoder endpoints ``{"stride<s>": [batch, H/s, W/s, c]}`` (or the pixel
  decoder's features, see ``MaskTransformer.semantic_head_input``).
  Output: semantic logits ``[batch, H/s_min, W/s_min, num_classes]``.

  Args:
    num_classes: number of semantic classes.
    input_stride: stride of the ASPP input.
    input_key: the input's key; default ``"stride<input_stride>"``.
    aspp: False: no ASPP (and no ``low_level_strides``): the activated input goes
      straight to the 5x5 separable head, as MaX-DeepLab-L's semantic branch on a
      stride-4 decoder feature.
    low_level_strides: strides of the low-level skips, coarse to fine.
    low_level_dims: projection width of each skip.
    aspp_dim: width of ASPP and the decoder.
    atrous_rates: ASPP atrous rates.
    head_dim: width of the last separable conv.
    dropout: dropout after ASPP.
    activation: activation function.
  """

  def __init__(self, num_classes: int = gin.REQUIRED, input_stride: int = 32,
               low_level_strides: Sequence[int] = (8, 4),
               low_level_dims: Sequence[int] = (64, 32), aspp_dim: int = 256,
               atrous_rates: Sequence[int] = (6, 12, 18), head_dim: int = 256,
               dropout: float = 0.1, activation: str = "gelu",
               input_key: Optional[str] = None, aspp: bool = True, **kwargs):
    super().__init__(**kwargs)
    self._input_key = input_key or f"stride{input_stride}"
    self._act = conv.get_activation(activation)
    if not aspp and low_level_strides:
      raise ValueError("SemanticHead: aspp=False reads one feature; set "
                       "low_level_strides = ().")
    self._aspp = (ASPP(aspp_dim, atrous_rates, activation, dropout, name="aspp")
                  if aspp else None)
    self._low_keys = [f"stride{s}" for s in low_level_strides]
    self._low_proj = [conv.ConvBN(d, 1, activation=activation, name=f"low_proj_s{s}")
                      for s, d in zip(low_level_strides, low_level_dims)]
    self._fuse = [conv.ConvBN(aspp_dim, 5, separable=True, activation=activation,
                              name=f"fuse_s{s}") for s in low_level_strides]
    self._head = conv.ConvBN(head_dim, 5, separable=True, activation=activation, name="head")
    self._logits = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        name="logits")

  def call(self, endpoints: Dict[str, tf.Tensor], training=None) -> tf.Tensor:
    if self._input_key not in endpoints:
      raise ValueError(f"SemanticHead reads {self._input_key!r}; its input has "
                       f"{sorted(endpoints)}.")
    x = self._act(endpoints[self._input_key])
    if self._aspp is not None:
      x = self._aspp(x, training=training)
    for key, proj, fuse in zip(self._low_keys, self._low_proj, self._fuse):
      low = proj(self._act(endpoints[key]), training=training)
      x = utils.resize_bilinear(x, utils.spatial_size(low))
      x = fuse(tf.concat([x, low], axis=-1), training=training)
    return self._logits(self._head(x, training=training))


@gin.configurable
class ReMaXSemanticHead(keras.layers.Layer):
  """ReMaX per-stage semantic head: ASPP then a 1x1 conv to classes (training-only).

  ReMaX (papers/remax.txt §3.1, §4) puts this head on the key of a k-means
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
