"""MaX-DeepLab dual-path transformer layer: a pixel path and a memory path.

The pixel path's own self-attention (P2P) is the axial block the layer follows;
this layer adds the communication between the two paths and the memory's own
attention (MaX-DeepLab section 3.2):
  * M2P + M2M (eq. 14): memory queries attend to the concatenation of pixel keys
    and memory keys under one softmax;
  * memory feed-forward network;
  * P2M (eq. 13): pixel queries attend to the memory keys of the layer's input
    memory.
As in deeplab2, similarity logits are batch-normalised per head (in place of the
1/sqrt(d) scale), retrieved values per head and channel, and each branch ends in a
1x1 projection whose BN starts at gamma 0, so a fresh layer is the identity.
"""

from typing import Any, Dict

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.drop_path import DropPath
from deeplab_panoptic.modeling.layers.multi_head import check_head_widths


class AttentionOperation(keras.layers.Layer):
  """softmax(BN(q.k)) v -> BN -> activation, multi-head.

  Inputs: query ``[batch, heads, l, dk]``, key ``[batch, heads, m, dk]``, value
  ``[batch, m, heads, dv]``. Output ``[batch, l, heads * dv]``.
  """

  def __init__(self, activation: str = "relu", **kwargs):
    super().__init__(**kwargs)
    self._act = conv.get_activation(activation)
    self._bn_similarity = conv.batch_norm(axis=1, name="batch_norm_similarity")
    self._bn_value = conv.batch_norm(axis=[1, 3], name="batch_norm_retrieved_value")

  def call(self, inputs, training=None) -> tf.Tensor:
    query, key, value = inputs
    logits = self._bn_similarity(tf.einsum("bhld,bhmd->bhlm", query, key),
                                 training=training)
    weights = tf.nn.softmax(logits, axis=-1)
    retrieved = tf.einsum("bhlm,bmhd->bhld", weights, value)
    retrieved = self._act(self._bn_value(retrieved, training=training))
    retrieved = tf.transpose(retrieved, [0, 2, 1, 3])
    length = retrieved.shape[1]
    return tf.reshape(retrieved, [-1, length, retrieved.shape[2] * retrieved.shape[3]])


class DenseBN(keras.layers.Layer):
  """Dense (1x1 conv, no bias) -> BN -> activation over ``[batch, length, c]``."""

  def __init__(self, units: int, activation=None, gamma_zero: bool = False,
               stddev=None, **kwargs):
    super().__init__(**kwargs)
    init = ("he_normal" if stddev is None
            else keras.initializers.TruncatedNormal(stddev=stddev))
    self._dense = keras.layers.Dense(units, use_bias=False, kernel_initializer=init,
                                     name="dense")
    self._bn = conv.batch_norm(gamma_zero=gamma_zero, name="bn")
    self._act = conv.get_activation(activation)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    return self._act(self._bn(self._dense(x), training=training))


def _split_heads(x: tf.Tensor, num_heads: int) -> tf.Tensor:
  """``[batch, l, c]`` -> ``[batch, heads, l, c / heads]``."""
  length, channels = x.shape[1], x.shape[2]
  x = tf.reshape(x, [-1, length, num_heads, channels // num_heads])
  return tf.transpose(x, [0, 2, 1, 3])


class DualPathTransformerLayer(keras.layers.Layer):
  """Memory <-> pixel communication of MaX-DeepLab (eqs. 13 and 14) with memory FFN.

  Inputs: pixel ``[batch, h, w, c_pixel]`` (non-activated), memory ``[batch, N,
  c_memory]`` (activated). Outputs: pixel ``[batch, h, w, c_pixel]``
  (non-activated) and memory ``[batch, N, c_memory]`` (activated).

  Args:
    bottleneck_dim: width both paths are projected to before attention.
    key_dim: total query/key width.
    value_dim: total value width.
    num_heads: attention heads.
    ffn_dim: hidden width of the memory feed-forward network.
    activation: activation function.
    drop_path_rate: drop path of the three residual branches (one mask each).
  """

  def __init__(self, bottleneck_dim: int = 256, key_dim: int = 128, value_dim: int = 256,
               num_heads: int = 8, ffn_dim: int = 2048, activation: str = "relu",
               drop_path_rate: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    check_head_widths("DualPathTransformerLayer", num_heads, key_dim=key_dim,
                      value_dim=value_dim)
    self.key_dim, self.value_dim, self.num_heads = key_dim, value_dim, num_heads
    self._bottleneck_dim = bottleneck_dim
    self._ffn_dim = ffn_dim
    self._activation = activation
    self._act = conv.get_activation(activation)
    std = bottleneck_dim ** -0.5
    qkv = 2 * key_dim + value_dim
    self._memory_conv1 = DenseBN(bottleneck_dim, activation, name="memory_conv1_bn_act")
    self._pixel_conv1 = DenseBN(bottleneck_dim, activation, name="pixel_conv1_bn_act")
    self._memory_qkv = DenseBN(qkv, stddev=std, name="memory_qkv_conv_bn")
    self._pixel_qkv = DenseBN(qkv, stddev=std, name="pixel_qkv_conv_bn")
    self._memory_attention = AttentionOperation(activation, name="memory_attention")
    self._pixel_attention = AttentionOperation(activation, name="pixel_attention")
    self._drop_memory_attention = DropPath(drop_path_rate)
    self._drop_ffn = DropPath(drop_path_rate)
    self._drop_pixel = DropPath(drop_path_rate)

  def build(self, input_shape):
    pixel_shape, memory_shape = input_shape
    c_pixel, c_memory = int(pixel_shape[-1]), int(memory_shape[-1])
    self._memory_conv3 = DenseBN(c_memory, gamma_zero=True, name="memory_conv3_bn")
    self._ffn1 = DenseBN(self._ffn_dim, self._activation, name="memory_ffn_conv1_bn_act")
    self._ffn2 = DenseBN(c_memory, gamma_zero=True, name="memory_ffn_conv2_bn")
    self._pixel_conv3 = DenseBN(c_pixel, gamma_zero=True, name="pixel_conv3_bn")
    super().build(input_shape)

  def _queries_keys_values(self, memory: tf.Tensor, pixel: tf.Tensor, training=None):
    """Memory and pixel queries, keys and values, flat and split into heads.

    Args:
      memory: [B, N, bottleneck] (after memory_conv1).
      pixel: [B, HW, bottleneck] (after pixel_conv1).

    Returns:
      ``(flat, heads)``, each ``(m_q, m_k, m_v, p_q, p_k, p_v)``: flat queries and
      keys [B, N or HW, key_dim], values [B, N or HW, value_dim]; per head, queries
      and keys as ``_split_heads`` and values [B, N or HW, heads, value_dim / heads].
    """
    split = [self.key_dim, self.key_dim, self.value_dim]
    m_q, m_k, m_v = tf.split(self._memory_qkv(memory, training=training), split, axis=-1)
    p_q, p_k, p_v = tf.split(self._pixel_qkv(pixel, training=training), split, axis=-1)
    h = self.num_heads
    heads = [_split_heads(t, h) for t in (m_q, m_k)]
    heads.append(tf.reshape(m_v, [-1, m_v.shape[1], h, self.value_dim // h]))
    heads += [_split_heads(t, h) for t in (p_q, p_k)]
    heads.append(tf.reshape(p_v, [-1, p_v.shape[1], h, self.value_dim // h]))
    return (m_q, m_k, m_v, p_q, p_k, p_v), tuple(heads)

  def call(self, inputs, training=None):
    pixel_input, memory_input = inputs
    _, height, width, c_pixel = pixel_input.shape.as_list()
    pixel_flat = tf.reshape(pixel_input, [-1, height * width, c_pixel])
    memory = self._memory_conv1(memory_input, training=training)
    pixel = self._pixel_conv1(self._act(pixel_flat), training=training)
    _, (m_q, m_k, m_v, p_q, p_k, p_v) = self._queries_keys_values(memory, pixel, training)

    # M2P + M2M (eq. 14): one softmax over pixel and memory keys.
    keys = tf.concat([p_k, m_k], axis=2)
    values = tf.concat([p_v, m_v], axis=1)
    update = self._memory_attention((m_q, keys, values), training=training)
    update = self._memory_conv3(update, training=training)
    memory_out = self._act(memory_input + self._drop_memory_attention(update,
                                                                      training=training))
    # Memory FFN.
    update = self._ffn2(self._ffn1(memory_out, training=training), training=training)
    memory_out = self._act(memory_out + self._drop_ffn(update, training=training))

    # P2M (eq. 13): pixels read the memory the layer received.
    update = self._pixel_attention((p_q, m_k, m_v), training=training)
    update = self._pixel_conv3(update, training=training)
    pixel_out = pixel_flat + self._drop_pixel(update, training=training)
    return tf.reshape(pixel_out, [-1, height, width, c_pixel]), memory_out


@gin.configurable
class DualPathConfig:
  """Widths of the dual-path transformer layers (deeplab2 MaX-S defaults).

  Args:
    num_memory: N, the memory slots (mask predictions).
    memory_dim: memory width.
    bottleneck_dim: width inside the layers.
    key_dim: total query/key width.
    value_dim: total value width.
    num_heads: attention heads.
    ffn_dim: hidden width of the memory feed-forward network.
  """

  def __init__(self, num_memory: int = 128, memory_dim: int = 256,
               bottleneck_dim: int = 256, key_dim: int = 128, value_dim: int = 256,
               num_heads: int = 8, ffn_dim: int = 2048):
    self.num_memory = num_memory
    self.memory_dim = memory_dim
    self.bottleneck_dim = bottleneck_dim
    self.key_dim = key_dim
    self.value_dim = value_dim
    self.num_heads = num_heads
    self.ffn_dim = ffn_dim

  layer_class = DualPathTransformerLayer
  """The layer ``make_layer`` builds (a subclass config may build a subclass)."""

  def layer_options(self) -> Dict[str, Any]:
    """Keyword arguments of ``layer_class`` beyond the widths (none here)."""
    return {}

  def make_layer(self, activation: str, drop_path_rate: float,
                 name: str) -> DualPathTransformerLayer:
    return self.layer_class(self.bottleneck_dim, self.key_dim, self.value_dim,
                            self.num_heads, self.ffn_dim, activation, drop_path_rate,
                            name=name, **self.layer_options())
