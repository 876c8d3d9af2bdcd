"""Deformable transformer encoder (Deformable DETR) as a pixel decoder.

Panoptic SegFormer's neck: a channel mapper (1x1 conv + GroupNorm(32) per level,
to 256 channels), optional extra levels (3x3 stride-2 conv + GN on the coarsest
backbone endpoint, Deformable DETR's 4th level), then deformable self-attention
layers over the concatenated tokens of all levels, with sine positional encodings
plus a learned per-level embedding. Optional finer levels (``fpn_strides``)
are not encoded: each is a 1x1 lateral conv + GN of its backbone endpoint plus
the 2x-upsampled next-coarser output, then a 3x3 conv + GN (an FPN step, as
Mask2Former's pixel decoder adds stride 4); a mask decoder can attend to them.
"""

from typing import Dict, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.deformable_attention import (
    MultiScaleDeformableAttention, flatten_levels)
from deeplab_panoptic.modeling.layers.feed_forward import FeedForward
from deeplab_panoptic.modeling.layers.positional_encoding import level_positional_encodings
from deeplab_panoptic.ops import resize


def encoder_reference_points(shapes: Sequence[Tuple[int, int]]) -> tf.Tensor:
  """Pixel centres ``((j + 0.5) / w, (i + 0.5) / h)`` of every token: ``[S, 2]``.

  With unpadded maps every level's valid ratio is 1, so the same normalised point
  serves as the reference on all levels.
  """
  points = []
  for h, w in shapes:
    y, x = tf.meshgrid((tf.range(h, dtype=tf.float32) + 0.5) / h,
                       (tf.range(w, dtype=tf.float32) + 0.5) / w, indexing="ij")
    points.append(tf.reshape(tf.stack([x, y], axis=-1), [h * w, 2]))
  return tf.concat(points, axis=0)


class DeformableEncoderLayer(keras.layers.Layer):
  """Post-norm: LN(x + MSDA(x + pos)); LN(x + FFN(x)). Tokens ``[batch, S, dim]``."""

  def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int,
               ffn_dim: int, dropout: float, **kwargs):
    super().__init__(**kwargs)
    self._attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points,
                                               name="self_attn")
    self._drop = keras.layers.Dropout(dropout)
    self._norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1")
    self._ffn = FeedForward(dim, ffn_dim, dropout, name="ffn")
    self._norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2")

  def call(self, x, pos, reference_points, shapes, training=None):
    attended = self._attn(x + pos, reference_points, x, shapes)
    x = self._norm1(x + self._drop(attended, training=training))
    return self._norm2(x + self._ffn(x, training=training))


@gin.configurable
class DeformableEncoder(base.PixelDecoder):
  """Channel mapper + deformable transformer encoder.

  Input: encoder endpoints ``{"stride<s>": [batch, H/s, W/s, c_s]}``.
  Output: ``{"stride<s>": [batch, H/s, W/s, hidden_dim]}`` for every input stride
  and extra level (stride doubling from the coarsest input).

  Args:
    input_strides: backbone endpoints used, fine to coarse (8, 16, 32).
    num_extra_levels: extra coarser levels made by 3x3 stride-2 conv + GN
      (Deformable DETR and the released Panoptic SegFormer use 1; the paper's
      text describes the three levels C3-C5, so 0).
    hidden_dim: width (256).
    num_layers: encoder layers (6, as Deformable DETR).
    num_heads: attention heads (8).
    num_points: sampling points per head and level (4).
    ffn_dim: feed-forward hidden width (1024).
    dropout: dropout rate (0.1).
    num_groups: GroupNorm groups of the channel mapper (32).
    fpn_strides: finer levels added after the encoder by FPN steps, e.g. (4,)
      (none in the paper; the CPU quickstart uses 4 for 32x32 masks).
  """

  def __init__(self, input_strides: Sequence[int] = (8, 16, 32), num_extra_levels: int = 0,
               hidden_dim: int = 256, num_layers: int = 6, num_heads: int = 8,
               num_points: int = 4, ffn_dim: int = 1024, dropout: float = 0.1,
               num_groups: int = 32, fpn_strides: Sequence[int] = (), **kwargs):
    super().__init__(**kwargs)
    self.input_strides = tuple(input_strides)
    self.fpn_strides = tuple(sorted(fpn_strides, reverse=True))   # coarse to fine
    if any(s >= self.input_strides[0] for s in self.fpn_strides):
      raise ValueError(f"DeformableEncoder.fpn_strides {fpn_strides} must be finer than "
                       f"input_strides[0] = {self.input_strides[0]}.")
    self.encoded_strides = self.input_strides + tuple(
        self.input_strides[-1] * 2 ** (i + 1) for i in range(num_extra_levels))
    num_levels = len(self.encoded_strides)
    self.hidden_dim = hidden_dim
    self.output_channels = {base.stride_key(s): hidden_dim
                            for s in self.encoded_strides + self.fpn_strides}
    self._mappers = []
    for s in self.input_strides:
      self._mappers.append((
          keras.layers.Conv2D(hidden_dim, 1, kernel_initializer="glorot_uniform",
                              name=f"mapper_s{s}"),
          keras.layers.GroupNormalization(num_groups, epsilon=1e-5, name=f"mapper_gn_s{s}")))
    for s in self.encoded_strides[len(self.input_strides):]:
      self._mappers.append((
          keras.Sequential([keras.layers.ZeroPadding2D(1),
                            keras.layers.Conv2D(hidden_dim, 3, 2, padding="valid",
                                                kernel_initializer="glorot_uniform")],
                           name=f"mapper_s{s}"),
          keras.layers.GroupNormalization(num_groups, epsilon=1e-5, name=f"mapper_gn_s{s}")))
    self._level_embed = self.add_weight(
        "level_embed", shape=[num_levels, hidden_dim],
        initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=True)
    self._layers = [DeformableEncoderLayer(hidden_dim, num_heads, num_levels, num_points,
                                           ffn_dim, dropout, name=f"layer{i}")
                    for i in range(num_layers)]
    self._fpn = [(keras.layers.Conv2D(hidden_dim, 1, use_bias=False, name=f"lateral_s{s}"),
                  keras.layers.GroupNormalization(num_groups, epsilon=1e-5,
                                                  name=f"lateral_gn_s{s}"),
                  keras.layers.Conv2D(hidden_dim, 3, padding="same", use_bias=False,
                                      name=f"output_s{s}"),
                  keras.layers.GroupNormalization(num_groups, epsilon=1e-5,
                                                  name=f"output_gn_s{s}"))
                 for s in self.fpn_strides]

  def call(self, endpoints: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    maps = []
    for i, (conv, norm) in enumerate(self._mappers):
      if i < len(self.input_strides):
        key = f"stride{self.input_strides[i]}"
        if key not in endpoints:
          raise ValueError(f"DeformableEncoder needs the pixel-encoder output {key!r}; "
                           f"it gives {sorted(endpoints)}.")
        x = endpoints[key]
      else:
        # Extra levels start from the coarsest backbone endpoint (Deformable DETR).
        x = endpoints[f"stride{self.input_strides[-1]}"] if i == len(self.input_strides) \
            else maps[-1]
      maps.append(norm(conv(x)))
    tokens, shapes = flatten_levels(maps)
    # Sine encodings are made in float32; cast to the tokens' (possibly bfloat16) dtype.
    pos = tf.cast(level_positional_encodings(shapes, self.hidden_dim), tokens.dtype)
    level_pos = tf.concat([tf.tile(self._level_embed[l:l + 1], [h * w, 1])
                           for l, (h, w) in enumerate(shapes)], axis=0)
    pos = (pos + level_pos)[tf.newaxis]
    reference = encoder_reference_points(shapes)
    reference = tf.tile(reference[tf.newaxis, :, tf.newaxis, :], [1, 1, len(shapes), 1])
    for layer in self._layers:
      tokens = layer(tokens, pos, reference, shapes, training=training)
    outputs = {}
    start = 0
    for s, (h, w) in zip(self.encoded_strides, shapes):
      outputs[f"stride{s}"] = tf.reshape(tokens[:, start:start + h * w],
                                         [-1, h, w, self.hidden_dim])
      start += h * w
    coarser = outputs[f"stride{self.input_strides[0]}"]
    for s, (lateral, lateral_norm, conv, norm) in zip(self.fpn_strides, self._fpn):
      key = f"stride{s}"
      if key not in endpoints:
        raise ValueError(f"DeformableEncoder.fpn_strides needs the pixel-encoder output "
                         f"{key!r}; it gives {sorted(endpoints)}.")
      x = lateral_norm(lateral(endpoints[key]))
      size = x.shape[1:3] if x.shape[1:3].is_fully_defined() else tf.shape(x)[1:3]
      x += resize.resize_bilinear(coarser, size)
      coarser = outputs[key] = tf.nn.relu(norm(conv(x)))
    return outputs
