"""The mask-transformer prediction head: class logits, mask logits, pixel embedding.

Shared by every mask-transformer family: the meta-architecture's final
prediction, kMaX-DeepLab's per-layer auxiliary predictions and CMT-DeepLab's head.
"""

import math
from typing import Dict

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers import conv


@gin.configurable
class MaskTransformerPredictor(base.MaskPredictor):
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
