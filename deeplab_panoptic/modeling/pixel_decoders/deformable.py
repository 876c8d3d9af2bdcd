"""Deformable transformer encoder (Deformable DETR) as a pixel decoder.

Panoptic SegFormer's neck: a channel mapper (1x1 conv + GroupNorm(32) per level,
to 256 channels), optional extra levels (3x3 stride-2 conv + GN on the coarsest
backbone endpoint, Deformable DETR's 4th level), then deformable self-attention
layers over the concatenated tokens of all levels, with sine positional encodings
plus a learned per-level embedding. Optional finer levels (``fpn_strides``)
are not encoded: each is a 1x1 lateral conv + GN of its backbone endpoint plus
the 2x-upsampled next-coarser output, then a 3x3 conv + GN (an FPN step, as
Mask2Former's pixel decoder adds stride 4); a mask decoder can attend to them.

Mask2Former's pixel decoder (Cheng et al., arXiv 2112.01527, Sec. 3.2.1 and
Sec. 4 "Pixel decoder"; public code: facebookresearch/Mask2Former,
``mask2former/modeling/pixel_decoder/msdeformattn.py``) is this encoder with
``input_strides=(32, 16, 8)`` (levels encoded coarse to fine: level 0 of the
level embedding and of the sampling offsets is 1/32), ``position_offset=0``,
``fpn_strides=(4,)`` and ``mask_features_dim=256`` (a 1x1 conv with bias on the
stride-4 output); ``configs/models/mask2former_pixel_decoder.gin``.
"""

from typing import Dict, List, Optional, Sequence, Tuple

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
  """Channel mapper + deformable transformer encoder (+ FPN steps, mask features).

  Input: encoder endpoints ``{"stride<s>": [batch, H/s, W/s, c_s]}``.
  Output: ``{"stride<s>": [batch, H/s, W/s, hidden_dim]}`` for every encoded level
  (``encoded_strides``: ``input_strides`` in their order, then the extra levels)
  and every FPN stride (coarse to fine), inserted in that order. With
  ``mask_features_dim``, the finest output is instead the 1x1 "mask features"
  conv of it, ``[batch, H/s, W/s, mask_features_dim]``. For Mask2Former that is
  ``stride32``, ``stride16``, ``stride8`` (the levels its masked-attention
  decoder cycles over, in that order) then ``stride4`` (the mask features).

  Args:
    input_strides: backbone endpoints encoded, in level order: fine to coarse
      (8, 16, 32) as Deformable DETR, or coarse to fine (32, 16, 8) as Mask2Former.
      The order fixes the level index of the level embedding and of the sampling
      offsets / attention weights, so it matters for imported weights only.
    num_extra_levels: extra coarser levels made by 3x3 stride-2 conv + GN
      (Deformable DETR and the released Panoptic SegFormer use 1; the paper's
      text describes the three levels C3-C5, so 0); needs fine-to-coarse
      ``input_strides``.
    hidden_dim: width (256).
    num_layers: encoder layers (6, as Deformable DETR).
    num_heads: attention heads (8).
    num_points: sampling points per head and level (4).
    ffn_dim: feed-forward hidden width (1024).
    dropout: dropout rate (0.1).
    num_groups: GroupNorm groups of the channel mapper (32).
    fpn_strides: finer levels added after the encoder by FPN steps, e.g. (4,)
      (none in the Panoptic SegFormer paper; Mask2Former has 4).
    position_offset: added to the 1-based pixel index of the sine encoding before
      normalising: -0.5 (Deformable DETR) or 0 (Mask2Former).
    mask_features_dim: if set, a 1x1 conv (with bias) to this width replaces the
      finest output (Mask2Former's mask features, 256).
  """

  def __init__(self, input_strides: Sequence[int] = (8, 16, 32), num_extra_levels: int = 0,
               hidden_dim: int = 256, num_layers: int = 6, num_heads: int = 8,
               num_points: int = 4, ffn_dim: int = 1024, dropout: float = 0.1,
               num_groups: int = 32, fpn_strides: Sequence[int] = (),
               position_offset: float = -0.5, mask_features_dim: Optional[int] = None,
               **kwargs):
    super().__init__(**kwargs)
    self.input_strides = tuple(input_strides)
    self._finest_input = min(self.input_strides)
    self.fpn_strides = tuple(sorted(fpn_strides, reverse=True))   # coarse to fine
    self._check_strides(num_extra_levels)
    self.encoded_strides = self.input_strides + tuple(
        self.input_strides[-1] * 2 ** (i + 1) for i in range(num_extra_levels))
    num_levels = len(self.encoded_strides)
    self.hidden_dim = hidden_dim
    self.position_offset = position_offset
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
    self._mask_features = None
    if mask_features_dim is not None:
      self.mask_features_stride = (self.fpn_strides or (self._finest_input,))[-1]
      self._mask_features = keras.layers.Conv2D(mask_features_dim, 1, name="mask_features")
      self.output_channels[base.stride_key(self.mask_features_stride)] = mask_features_dim

  def _check_strides(self, num_extra_levels: int):
    ascending = list(self.input_strides) == sorted(self.input_strides)
    if len(set(self.input_strides)) != len(self.input_strides) or not (
        ascending or list(self.input_strides) == sorted(self.input_strides, reverse=True)):
      raise ValueError(f"DeformableEncoder.input_strides {self.input_strides} must be "
                       f"distinct and in fine-to-coarse or coarse-to-fine order.")
    if num_extra_levels and not ascending:
      raise ValueError(f"DeformableEncoder.num_extra_levels = {num_extra_levels} needs "
                       f"fine-to-coarse input_strides, not {self.input_strides}.")
    if any(s >= self._finest_input for s in self.fpn_strides):
      raise ValueError(f"DeformableEncoder.fpn_strides {self.fpn_strides} must be finer than "
                       f"the finest input stride {self._finest_input}.")

  def _endpoint(self, endpoints: Dict[str, tf.Tensor], stride: int, option: str) -> tf.Tensor:
    key = f"stride{stride}"
    if key not in endpoints:
      raise ValueError(f"DeformableEncoder.{option} needs the pixel-encoder output "
                       f"{key!r}; it gives {sorted(endpoints)}.")
    return endpoints[key]

  def _mapped_levels(self, endpoints: Dict[str, tf.Tensor]) -> List[tf.Tensor]:
    """Channel-mapped levels in ``encoded_strides`` order, ``[batch, h_l, w_l, dim]``."""
    maps = []
    for i, (conv, norm) in enumerate(self._mappers):
      if i < len(self.input_strides):
        x = self._endpoint(endpoints, self.input_strides[i], "input_strides")
      else:
        # Extra levels start from the coarsest backbone endpoint (Deformable DETR).
        x = endpoints[f"stride{self.input_strides[-1]}"] if i == len(self.input_strides) \
            else maps[-1]
      maps.append(norm(conv(x)))
    return maps

  def call(self, endpoints: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    tokens, shapes = flatten_levels(self._mapped_levels(endpoints))
    # Sine encodings are made in float32; cast to the tokens' (possibly bfloat16) dtype.
    pos = tf.cast(level_positional_encodings(shapes, self.hidden_dim, self.position_offset),
                  tokens.dtype)
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
    coarser = outputs[f"stride{self._finest_input}"]
    for s, (lateral, lateral_norm, conv, norm) in zip(self.fpn_strides, self._fpn):
      x = lateral_norm(lateral(self._endpoint(endpoints, s, "fpn_strides")))
      size = x.shape[1:3] if x.shape[1:3].is_fully_defined() else tf.shape(x)[1:3]
      x += resize.resize_bilinear(coarser, size)
      coarser = outputs[f"stride{s}"] = tf.nn.relu(norm(conv(x)))
    if self._mask_features is not None:
      key = f"stride{self.mask_features_stride}"
      outputs[key] = self._mask_features(outputs[key])
    return outputs
