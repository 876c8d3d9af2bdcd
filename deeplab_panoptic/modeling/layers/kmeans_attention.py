"""k-means cross-attention and the kMaX transformer layer built on it."""

from typing import Dict, Optional, Tuple

import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.drop_path import DropPath
from deeplab_panoptic.modeling.layers.multi_head import check_head_widths


def kmeans_assignment(mask_logits: tf.Tensor) -> tf.Tensor:
  """Hard cluster assignment: each pixel goes to the centre with the largest logit.

  Args:
    mask_logits: ``[batch, h, w, N]`` pixel-to-centre affinities.

  Returns:
    ``[batch, h, w, N]`` one-hot assignment, with no gradient (the argmax is the
    k-means E-step; the M-step below is what gets trained).
  """
  num_centers = mask_logits.shape[-1]
  assign = tf.one_hot(tf.argmax(mask_logits, axis=-1), num_centers, dtype=mask_logits.dtype)
  return tf.stop_gradient(assign)


def kmeans_center_update(assignment: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
  """k-means M-step: sum of the values of the pixels assigned to each centre.

  Args:
    assignment: ``[batch, h, w, N]`` one-hot assignment.
    values: ``[batch, h, w, d]`` pixel values.

  Returns:
    ``[batch, N, d]``: per-centre sum (kMaX uses the sum, not the mean; the BN
    after it normalises the scale).
  """
  return tf.einsum("bhwn,bhwd->bnd", assignment, values)


class MultiHeadSelfAttention(keras.layers.Layer):
  """Multi-head self-attention among cluster centres.

  As deeplab2's kMaX layers, the similarity logits get a batch norm (one gamma /
  beta per head) instead of the 1/sqrt(depth) scale; ``similarity_batch_norm``
  False gives the scaled dot product without it.

  Input ``[batch, N, d_in]``; output ``[batch, N, value_dim]`` (activated).
  """

  def __init__(self, num_heads: int, key_dim: int, value_dim: int, activation: str,
               similarity_batch_norm: bool = True, **kwargs):
    super().__init__(**kwargs)
    check_head_widths("MultiHeadSelfAttention", num_heads, key_dim=key_dim,
                      value_dim=value_dim)
    self._heads, self._key_dim, self._value_dim = num_heads, key_dim, value_dim
    self._qkv = keras.layers.Dense(2 * key_dim + value_dim, use_bias=False, name="qkv")
    self._qkv_bn = conv.batch_norm(name="qkv_bn")
    self._value_bn = conv.batch_norm(name="value_bn")
    # Logits [batch, head, query, key]: normalised per head.
    self._similarity_bn = (conv.batch_norm(axis=1, name="similarity_bn")
                           if similarity_batch_norm else None)
    self._act = conv.get_activation(activation)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    qkv = self._qkv_bn(self._qkv(x), training=training)
    q, k, v = tf.split(qkv, [self._key_dim, self._key_dim, self._value_dim], axis=-1)
    n = x.shape[1]
    q = tf.reshape(q, [-1, n, self._heads, self._key_dim // self._heads])
    k = tf.reshape(k, [-1, n, self._heads, self._key_dim // self._heads])
    v = tf.reshape(v, [-1, n, self._heads, self._value_dim // self._heads])
    if self._similarity_bn is not None:
      logits = self._similarity_bn(tf.einsum("bnhc,bmhc->bhnm", q, k), training=training)
    else:
      scale = (self._key_dim // self._heads) ** -0.5
      logits = tf.einsum("bnhc,bmhc->bhnm", q * scale, k)
    attn = tf.nn.softmax(logits, axis=-1)
    out = tf.reshape(tf.einsum("bhnm,bmhc->bnhc", attn, v), [-1, n, self._value_dim])
    return self._act(self._value_bn(out, training=training))


class KMaXTransformerLayer(keras.layers.Layer):
  """One kMaX-DeepLab transformer layer: k-means cross-attention, self-attention, FFN.

  1. Bottleneck projections of centres ``Cs`` and pixels ``Ps``.
  2. An auxiliary predictor on (Ps, Cs) gives class and mask logits; the hard
     assignment is the argmax of the mask logits over the centres.
  3. k-means update: centres += proj(sum of assigned pixel values).
  4. Self-attention among the (pre-update) centres, in parallel, added as well.
  5. Feed-forward network with a residual connection.

  With a ``semantic_head`` (ReMaX), the auxiliary prediction dict also holds, in
  training only, common.PRED_STAGE_SEMANTIC_LOGITS ``[batch, h, w, num_classes]``:
  the head applied to the k-means key feature ``Ps`` (ReMaX §4: "the key in each
  k-means cross-attention" is x_sem).

  Inputs: pixels ``[batch, h, w, c]`` (non-activated), centres ``[batch, N, d]``.
  Outputs: updated centres ``[batch, N, d]`` and the auxiliary prediction dict.
  """

  def __init__(self, center_dim: int, bottleneck_dim: int, num_heads: int,
               key_dim: int, value_dim: int, ffn_dim: int, predictor: keras.layers.Layer,
               activation: str = "gelu", drop_path_rate: float = 0.0,
               semantic_head: Optional[keras.layers.Layer] = None,
               similarity_batch_norm: bool = True, **kwargs):
    super().__init__(**kwargs)
    # Training-only (ReMaX); its owner lists it in `training_only_layers`.
    self.semantic_head = semantic_head
    self._act = conv.get_activation(activation)
    self._center_in = keras.layers.Dense(bottleneck_dim, use_bias=False, name="center_in")
    self._center_in_bn = conv.batch_norm(name="center_in_bn")
    self._pixel_in = conv.ConvBN(bottleneck_dim, 1, activation=activation, name="pixel_in")
    self._predictor = predictor
    self._pixel_value = conv.ConvBN(bottleneck_dim, 1, name="pixel_value")
    self._update_bn = conv.batch_norm(name="kmeans_update_bn")
    self._update_out = keras.layers.Dense(center_dim, use_bias=False, name="kmeans_out")
    self._update_out_bn = conv.batch_norm(gamma_zero=True, name="kmeans_out_bn")
    self._self_attention = MultiHeadSelfAttention(
        num_heads, key_dim, value_dim, activation,
        similarity_batch_norm=similarity_batch_norm, name="self_attention")
    self._attn_out = keras.layers.Dense(center_dim, use_bias=False, name="attention_out")
    self._attn_out_bn = conv.batch_norm(gamma_zero=True, name="attention_out_bn")
    self._ffn_in = keras.layers.Dense(ffn_dim, use_bias=False, name="ffn_in")
    self._ffn_in_bn = conv.batch_norm(name="ffn_in_bn")
    self._ffn_out = keras.layers.Dense(center_dim, use_bias=False, name="ffn_out")
    self._ffn_out_bn = conv.batch_norm(gamma_zero=True, name="ffn_out_bn")
    # Independent drop-path masks per branch, as in the dual-path transformer.
    self._drop_kmeans = DropPath(drop_path_rate)
    self._drop_attn = DropPath(drop_path_rate)
    self._drop_ffn = DropPath(drop_path_rate)

  def call(self, pixels: tf.Tensor, centers: tf.Tensor,
           training=None) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    cs = self._act(self._center_in_bn(self._center_in(centers), training=training))
    ps = self._pixel_in(self._act(pixels), training=training)

    aux = self._predictor(ps, cs, cs, training=training)
    assignment = kmeans_assignment(aux[common.PRED_MASK_LOGITS])
    if self.semantic_head is not None and training:
      # Only in training: inference neither builds nor runs the ReMaX branch.
      aux = dict(aux)
      aux[common.PRED_STAGE_SEMANTIC_LOGITS] = self.semantic_head(ps, training=training)

    values = self._pixel_value(ps, training=training)
    update = kmeans_center_update(assignment, values)
    update = self._update_bn(update, training=training)
    update = self._update_out_bn(self._update_out(update), training=training)

    attn = self._self_attention(cs, training=training)
    attn = self._attn_out_bn(self._attn_out(attn), training=training)

    centers = self._act(centers + self._drop_kmeans(update, training=training)
                        + self._drop_attn(attn, training=training))
    ffn = self._act(self._ffn_in_bn(self._ffn_in(centers), training=training))
    ffn = self._ffn_out_bn(self._ffn_out(ffn), training=training)
    centers = self._act(centers + self._drop_ffn(ffn, training=training))
    return centers, aux
