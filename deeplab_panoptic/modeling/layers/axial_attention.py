"""Position-sensitive axial attention (Axial-DeepLab), as used by MaX-DeepLab.

One ``AxialAttention`` layer attends along one axis of length ``L`` with
``num_heads`` heads. Its similarity is the sum of three batch-normalised terms,
content ``q.k``, query-position ``q.r_q`` and key-position ``k.r_k``; its output is
the sum of two batch-normalised terms, the attended values and the attended value
positions ``r_v``. The relative positional tables are shared by all heads and
hold ``2 * MAX_SPAN - 1`` entries, so any axis length up to ``MAX_SPAN`` gets its
own embedding per relative distance (deeplab2's convention; longer distances
share the boundary entry). Attention is global along the axis.

``AxialAttention2D`` applies a height pass then a width pass, each with its own
weights, sub-sampling after each pass when strided.
"""

from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.drop_path import DropPath
from deeplab_panoptic.modeling.layers.multi_head import check_head_widths

# Largest relative distance with its own embedding (deeplab2: 255, table of 509).
MAX_SPAN = 255


def relative_distance_index(length: int, max_span: int = MAX_SPAN) -> np.ndarray:
  """Table row of each (query, key) pair: ``key - query + max_span - 1``, clipped.

  Args:
    length: axis length (queries and keys both span it: global attention).
    max_span: largest distance with its own embedding.

  Returns:
    int32 ``[length, length]`` indices into a ``[2 * max_span - 1, depth]`` table.
  """
  index = np.arange(length)[None, :] - np.arange(length)[:, None] + max_span - 1
  return np.clip(index, 0, 2 * max_span - 2).astype(np.int32)


class AxialAttention(keras.layers.Layer):
  """Multi-head position-sensitive self-attention along one axis.

  Input ``[batch, length, channels]``; output ``[batch, length, value_dim]``.

  Args:
    key_dim: total query/key width (split over heads).
    value_dim: total value width (split over heads), the output width.
    num_heads: attention heads.
    max_span: relative distances with their own embedding (table of 2*span-1).
    rpe_stddev: initial standard deviation of the positional tables.
  """

  def __init__(self, key_dim: int, value_dim: int, num_heads: int = 8,
               max_span: int = MAX_SPAN, rpe_stddev: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    check_head_widths("AxialAttention", num_heads, key_dim=key_dim, value_dim=value_dim)
    self.key_dim, self.value_dim, self.num_heads = key_dim, value_dim, num_heads
    self.max_span = max_span
    self._rpe_stddev = rpe_stddev
    self._bn_qkv = conv.batch_norm(name="batch_norm_qkv")
    # Stacked [term, batch, head, query, key]: one gamma/beta per (term, head).
    self._bn_similarity = conv.batch_norm(axis=[0, 2], name="batch_norm_similarity")
    # Stacked [term, batch, head, query, depth]: per (term, head, channel).
    self._bn_output = conv.batch_norm(axis=[0, 2, 4], name="batch_norm_retrieved_output")

  def build(self, input_shape):
    length, channels = int(input_shape[1]), int(input_shape[2])
    self._length = length
    # Standard transformer init; the BN after the projection makes it uncritical.
    self.qkv_kernel = self.add_weight(
        "qkv_kernel", shape=[channels, 2 * self.key_dim + self.value_dim],
        initializer=keras.initializers.TruncatedNormal(stddev=channels ** -0.5))
    table_size = 2 * self.max_span - 1
    # A fresh initializer per table: one unseeded instance repeats its values.
    init = lambda: keras.initializers.TruncatedNormal(stddev=self._rpe_stddev)
    dk, dv = self.key_dim // self.num_heads, self.value_dim // self.num_heads
    self.query_rpe = self.add_weight("query_rpe", shape=[table_size, dk], initializer=init())
    self.key_rpe = self.add_weight("key_rpe", shape=[table_size, dk], initializer=init())
    self.value_rpe = self.add_weight("value_rpe", shape=[table_size, dv],
                                     initializer=init())
    # Kept in numpy: a tensor made here would belong to whichever graph built the layer.
    self._index = relative_distance_index(length, self.max_span)
    super().build(input_shape)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    h = self.num_heads
    dk, dv = self.key_dim // h, self.value_dim // h
    length = self._length
    qkv = self._bn_qkv(tf.einsum("blc,cd->bld", x, self.qkv_kernel), training=training)
    q, k, v = tf.split(qkv, [self.key_dim, self.key_dim, self.value_dim], axis=-1)
    q = tf.reshape(q, [-1, length, h, dk])
    k = tf.reshape(k, [-1, length, h, dk])
    v = tf.reshape(v, [-1, length, h, dv])
    r_q = tf.gather(self.query_rpe, self._index)  # [query, key, dk]
    r_k = tf.gather(self.key_rpe, self._index)
    r_v = tf.gather(self.value_rpe, self._index)
    similarity = tf.stack([
        tf.einsum("blhd,bmhd->bhlm", q, k),
        tf.einsum("blhd,lmd->bhlm", q, r_q),
        tf.einsum("bmhd,lmd->bhlm", k, r_k),
    ])
    similarity = tf.reduce_sum(self._bn_similarity(similarity, training=training), axis=0)
    weights = tf.nn.softmax(similarity, axis=-1)
    retrieved = tf.stack([
        tf.einsum("bhlm,bmhd->bhld", weights, v),
        tf.einsum("bhlm,lmd->bhld", weights, r_v),
    ])
    retrieved = tf.reduce_sum(self._bn_output(retrieved, training=training), axis=0)
    retrieved = tf.transpose(retrieved, [0, 2, 1, 3])  # [batch, length, head, dv]
    return tf.reshape(retrieved, [-1, length, self.value_dim])


class AxialAttention2D(keras.layers.Layer):
  """Height-axis then width-axis attention, each sub-sampled by ``strides``.

  Input ``[batch, height, width, channels]`` (static height and width); output
  ``[batch, ceil(height / strides), ceil(width / strides), value_dim]``.

  Args:
    key_dim: total query/key width of each pass.
    value_dim: total value width of each pass (the output width).
    num_heads: attention heads.
    strides: 1 or 2; sub-samples after the height pass and after the width pass.
    max_span: see ``AxialAttention``.
  """

  def __init__(self, key_dim: int, value_dim: int, num_heads: int = 8, strides: int = 1,
               max_span: int = MAX_SPAN, **kwargs):
    super().__init__(**kwargs)
    self.value_dim = value_dim
    self.strides = strides
    self._height_axis = AxialAttention(key_dim, value_dim, num_heads, max_span,
                                       name="height_axis")
    self._width_axis = AxialAttention(key_dim, value_dim, num_heads, max_span,
                                      name="width_axis")

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    _, height, width, channels = x.shape.as_list()
    if height is None or width is None:
      raise ValueError("AxialAttention2D needs static height and width, got "
                       f"{x.shape}.")
    x = tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [-1, height, channels])
    x = self._height_axis(x, training=training)
    x = tf.transpose(tf.reshape(x, [-1, width, height, self.value_dim]), [0, 2, 1, 3])
    if self.strides > 1:
      x = x[:, ::self.strides]
    height = x.shape[1]
    x = tf.reshape(x, [-1, width, self.value_dim])
    x = self._width_axis(x, training=training)
    x = tf.reshape(x, [-1, height, width, self.value_dim])
    if self.strides > 1:
      x = x[:, :, ::self.strides]
    return x


def block_widths(kind: str, filters: int, expansion: int, axial_key_expansion: float = 1.0,
                 axial_value_expansion: float = 2.0):
  """Widths of a block from its stage's base width ``filters``.

  bottleneck: (f, f, f*e); axial: conv1 and values ``f * value_expansion``, keys
  ``f * key_expansion``, output f*e (deeplab2 MaX-S: 1 and 2, MaX-L: 2 and 4);
  basic: (f*e, f*e). Returns (widths, key_dim or None).
  """
  if kind == "bottleneck":
    return (filters, filters, filters * expansion), None
  if kind == "axial":
    value = int(round(filters * axial_value_expansion))
    return (value, value, filters * expansion), int(round(filters * axial_key_expansion))
  if kind == "basic":
    return (filters * expansion, filters * expansion), None
  raise ValueError(f"Unknown block kind {kind!r}; use 'bottleneck', 'axial' or 'basic'.")


class ResidualBlock(keras.layers.Layer):
  """Residual block of Axial-ResNet and Wide-ResNet (deeplab2 conventions).

  The block activates its non-activated input on entry (the shortcut takes the
  activated input), its last BN starts at gamma 0, and its output (branch +
  shortcut) is not activated. Kinds:
    "bottleneck": 1x1 (``filters[0]``) -> 3x3 (``filters[1]``, strided) -> 1x1.
    "axial": 1x1 (``filters[0]``) -> axial attention (``key_dim``, value width
      ``filters[1]``, strided) -> activation -> 1x1.
    "basic": 3x3 (``filters[0]``, strided) -> 3x3 (``filters[1]``).
  The last entry of ``filters`` is the output width; a 1x1 conv + BN shortcut
  (strided) is used when the width or stride changes.

  Input ``[batch, h, w, c]``; output ``[batch, h / strides, w / strides, filters[-1]]``.

  Args:
    filters: widths, three for bottleneck/axial, two for basic.
    kind: "bottleneck", "axial" or "basic".
    strides: 1 or 2.
    key_dim: total query/key width of axial attention.
    num_heads: axial attention heads.
    activation: activation function.
    drop_path_rate: drop path of the residual branch.
  """

  def __init__(self, filters, kind: str = "bottleneck", strides: int = 1,
               key_dim: Optional[int] = None, num_heads: int = 8,
               activation: str = "relu", drop_path_rate: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.filters = tuple(int(f) for f in filters)
    self.kind = kind
    self.strides = strides
    self._act = conv.get_activation(activation)
    self._middle = None
    if kind == "basic":
      if len(self.filters) != 2:
        raise ValueError(f"ResidualBlock 'basic' needs two widths, got {filters}.")
      self._first = conv.ConvBN(self.filters[0], 3, strides, activation, name="conv1")
      self._last = conv.ConvBN(self.filters[1], 3, bn_gamma_zero=True, name="conv2")
    elif kind in ("bottleneck", "axial"):
      if len(self.filters) != 3:
        raise ValueError(f"ResidualBlock {kind!r} needs three widths, got {filters}.")
      self._first = conv.ConvBN(self.filters[0], 1, activation=activation, name="conv1")
      if kind == "bottleneck":
        self._middle = conv.ConvBN(self.filters[1], 3, strides, activation, name="conv2")
      else:
        if key_dim is None:
          raise ValueError("ResidualBlock 'axial' needs key_dim.")
        self._middle = AxialAttention2D(key_dim, self.filters[1], num_heads, strides,
                                        name="attention")
      self._last = conv.ConvBN(self.filters[2], 1, bn_gamma_zero=True, name="conv3")
    else:
      raise ValueError(f"ResidualBlock: unknown kind {kind!r}; "
                       "supported: 'bottleneck', 'axial', 'basic'.")
    self._drop_path = DropPath(drop_path_rate)
    self._shortcut = None

  def build(self, input_shape):
    if int(input_shape[-1]) != self.filters[-1] or self.strides != 1:
      self._shortcut = conv.ConvBN(self.filters[-1], 1, self.strides, name="shortcut")
    super().build(input_shape)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    x = self._act(x)
    shortcut = x if self._shortcut is None else self._shortcut(x, training=training)
    y = self._first(x, training=training)
    if self._middle is not None:
      y = self._middle(y, training=training)
      if self.kind == "axial":
        # Axial attention ends in BN without activation; the conv's ConvBN activates.
        y = self._act(y)
    y = self._last(y, training=training)
    return shortcut + self._drop_path(y, training=training)
