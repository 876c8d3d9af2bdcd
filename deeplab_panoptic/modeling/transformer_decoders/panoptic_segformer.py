"""Panoptic SegFormer decoders (Li et al., CVPR 2022): location and mask decoders.

* Location decoder: N learned queries (a 2 x dim embedding split into positional
  part and target, as Deformable DETR) go through Deformable DETR decoder layers
  (self-attention -> deformable cross-attention over all encoder levels -> FFN,
  post-norm). Reference points are ``sigmoid(Linear(query_pos))``. An MLP head
  predicts each query's mask centre and scale (common.PRED_LOCATION_CENTER /
  PRED_LOCATION_SCALE) for L_loc: one head on the last layer, used in training
  only; or, with ``location_refine`` (Deformable DETR's iterative box
  refinement, "the location decoder learns the reference points"), one
  unshared head per layer whose box (cx, cy, w, h) becomes the next layer's
  (detached) reference, at inference too; the earlier layers' boxes are
  supervised as AUX_LOCATIONS.
* Mask decoder: layers of full multi-head cross-attention (optionally after a
  self-attention over the queries: a DETR decoder layer) from the
  location-aware queries to the encoder tokens of strides 8/16/32, each
  followed by an FFN, post-norm. Every layer predicts: class = one FC on the
  refined queries; mask = the layer's attention logits A (the scaled q.k^T, before
  softmax) split per level, upsampled to stride 8 and fused over levels x heads by
  a 1x1 conv (paper eq. 1-2). The last layer's prediction is the output, the
  earlier ones are auxiliary (deep supervision, as the released code).

The 1x1 fusion is applied per level before the upsampling: both are linear, so
``Conv1x1(Concat(Up(A_l)))`` equals ``sum_l Up(Conv1x1_l(A_l))`` exactly, without
materialising ``[N, H/8, W/8, levels x heads]``.
"""

import math
from typing import Dict, List, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.deformable_attention import (
    MultiScaleDeformableAttention, flatten_levels)
from deeplab_panoptic.modeling.layers.feed_forward import FeedForward
from deeplab_panoptic.modeling.layers.positional_encoding import level_positional_encodings
from deeplab_panoptic.ops import resize


class MultiHeadAttention(keras.layers.Layer):
  """Multi-head attention that also returns its logits (as torch's nn.MultiheadAttention
  in parameters: q, k, v, output projections with bias).

  Inputs: query ``[batch, Q, dim]``, key ``[batch, S, dim]``, value ``[batch, S, dim]``.
  Outputs: ``([batch, Q, dim], logits [batch, heads, Q, S])``, logits = q.k / sqrt(d_h).
  """

  def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self._heads = num_heads
    self._head_dim = dim // num_heads
    self._q = keras.layers.Dense(dim, name="q")
    self._k = keras.layers.Dense(dim, name="k")
    self._v = keras.layers.Dense(dim, name="v")
    self._o = keras.layers.Dense(dim, name="out")
    self._drop = keras.layers.Dropout(dropout)

  def call(self, query, key, value, training=None):
    heads, head_dim = self._heads, self._head_dim
    q = tf.reshape(self._q(query), [-1, query.shape[1], heads, head_dim])
    k = tf.reshape(self._k(key), [-1, key.shape[1], heads, head_dim])
    v = tf.reshape(self._v(value), [-1, value.shape[1], heads, head_dim])
    logits = tf.einsum("bqhd,bshd->bhqs", q, k) * (head_dim ** -0.5)
    attention = self._drop(tf.nn.softmax(logits, axis=-1), training=training)
    out = tf.einsum("bhqs,bshd->bqhd", attention, v)
    out = tf.reshape(out, [-1, query.shape[1], heads * head_dim])
    return self._o(out), logits


class LocationDecoderLayer(keras.layers.Layer):
  """Deformable DETR decoder layer, post-norm. Queries ``[batch, N, dim]``."""

  def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int,
               ffn_dim: int, dropout: float, **kwargs):
    super().__init__(**kwargs)
    self._self_attn = MultiHeadAttention(dim, num_heads, dropout, name="self_attn")
    self._norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1")
    self._cross_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points,
                                                     name="cross_attn")
    self._norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2")
    self._ffn = FeedForward(dim, ffn_dim, dropout, name="ffn")
    self._norm3 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm3")
    self._drop1 = keras.layers.Dropout(dropout)
    self._drop2 = keras.layers.Dropout(dropout)

  def call(self, tgt, query_pos, reference_points, memory, shapes, training=None):
    q = tgt + query_pos
    attended, _ = self._self_attn(q, q, tgt, training=training)
    tgt = self._norm1(tgt + self._drop1(attended, training=training))
    attended = self._cross_attn(tgt + query_pos, reference_points, memory, shapes)
    tgt = self._norm2(tgt + self._drop2(attended, training=training))
    return self._norm3(tgt + self._ffn(tgt, training=training))


class MaskDecoderLayer(keras.layers.Layer):
  """[Self-attention +] full cross-attention + FFN (GELU), post-norm.

  With ``self_attention`` it is a DETR decoder layer (self-attention over the
  queries, cross-attention to the memory, FFN); without, the released code's
  thing mask decoder layer. Returns the refined queries ``[batch, N, dim]`` and
  the cross-attention logits ``[batch, heads, N, S]``.
  """

  def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float,
               self_attention: bool = False, **kwargs):
    super().__init__(**kwargs)
    self._self_attn = (MultiHeadAttention(dim, num_heads, dropout, name="self_attn")
                       if self_attention else None)
    if self_attention:
      self._norm0 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm0")
    self._cross_attn = MultiHeadAttention(dim, num_heads, dropout, name="cross_attn")
    self._norm1 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm1")
    self._ffn = FeedForward(dim, ffn_dim, dropout, activation="gelu", name="ffn")
    self._norm2 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm2")

  def call(self, tgt, query_pos, memory, memory_pos, training=None):
    if self._self_attn is not None:
      q = tgt + query_pos
      attended, _ = self._self_attn(q, q, tgt, training=training)
      tgt = self._norm0(tgt + attended)
    attended, logits = self._cross_attn(tgt + query_pos, memory + memory_pos, memory,
                                        training=training)
    tgt = self._norm1(tgt + attended)
    return self._norm2(tgt + self._ffn(tgt, training=training)), logits


# Training output: list of {PRED_LOCATION_CENTER, PRED_LOCATION_SCALE} dicts of the
# earlier location-decoder layers (``location_refine`` only).
AUX_LOCATIONS = common.AUX_LOCATIONS


def inverse_sigmoid(x: tf.Tensor, eps: float = 1e-5) -> tf.Tensor:
  """logit(x) with x clipped to [0, 1] and both sides floored at eps."""
  x = tf.clip_by_value(x, 0.0, 1.0)
  return tf.math.log(tf.maximum(x, eps) / tf.maximum(1.0 - x, eps))


class MLP(keras.layers.Layer):
  """``num_layers`` dense layers, ReLU between them."""

  def __init__(self, hidden_dim: int, output_dim: int, num_layers: int,
               last_bias_init: keras.initializers.Initializer = "zeros",
               last_kernel_init: keras.initializers.Initializer = "glorot_uniform",
               **kwargs):
    super().__init__(**kwargs)
    self._layers = [keras.layers.Dense(hidden_dim, activation="relu", name=f"fc{i}")
                    for i in range(num_layers - 1)]
    self._layers.append(keras.layers.Dense(output_dim, kernel_initializer=last_kernel_init,
                                           bias_initializer=last_bias_init,
                                           name=f"fc{num_layers - 1}"))

  def call(self, x):
    for layer in self._layers:
      x = layer(x)
    return x


@gin.configurable
class PanopticSegFormerDecoder(base.TransformerDecoder):
  """Location decoder + mask decoder + class/mask prediction.

  The decoder makes the predictions itself (``predicts_outputs``): the
  meta-architecture uses its output dict instead of a ``MaskTransformerPredictor``.

  Input: pixel-decoder features ``{"stride<s>": [batch, H/s, W/s, dim]}``.
  Output: dict with common.PRED_CLASS_LOGITS ``[batch, N, num_classes + 1]`` (the
  void logit is kept for the common contract; the focal loss and mask-wise merging
  read the first num_classes), PRED_MASK_LOGITS ``[batch, H/8, W/8, N]``,
  AUX_OUTPUTS (the earlier mask-decoder layers' predictions) and, when training,
  PRED_LOCATION_CENTER ``[batch, N, 2]`` (y, x) and PRED_LOCATION_SCALE
  ``[batch, N, location_scale_dim]``, both in [0, 1] (with ``location_refine``
  also AUX_LOCATIONS, the same pair for each earlier location-decoder layer).

  Args:
    num_classes: semantic classes (without void).
    num_queries: N (400 panoptic; 300 instance-only).
    location_strides: levels the deformable cross-attention samples (all levels
      of the pixel decoder).
    mask_strides: levels the mask decoder attends to (8, 16, 32); the first is
      the stride of the masks.
    hidden_dim: width (256).
    num_heads: heads of every attention (8).
    num_points: deformable sampling points per head and level (4).
    num_location_layers: location-decoder layers (6).
    num_mask_layers: mask-decoder layers (4).
    ffn_dim: location-decoder FFN width (1024).
    mask_ffn_dim: mask-decoder FFN width (1024).
    dropout: dropout in the location decoder (0.1).
    mask_dropout: dropout in the mask decoder (0, the released code).
    mask_self_attention: self-attention over the queries in every mask-decoder
      layer (a DETR decoder layer; the paper's parameter count needs it, see
      docs/models/panoptic_segformer.md); False: the released code's thing
      mask decoder (cross-attention + FFN only).
    location_scale_dim: 2 (box height, width) or 1 (area); match
      LocationL1.scale_target.
    location_refine: iterative box refinement: one location head per
      location-decoder layer, each refining the reference box of the next layer
      (needs location_scale_dim = 2). The heads are then inference layers.
    class_prior_probability: initial sigmoid probability of every class (0.01).
  """

  predicts_outputs = True

  def __init__(self, num_classes: int = gin.REQUIRED, num_queries: int = 400,
               location_strides: Sequence[int] = (8, 16, 32),
               mask_strides: Sequence[int] = (8, 16, 32), hidden_dim: int = 256,
               num_heads: int = 8, num_points: int = 4, num_location_layers: int = 6,
               num_mask_layers: int = 4, ffn_dim: int = 1024, mask_ffn_dim: int = 1024,
               dropout: float = 0.1, mask_dropout: float = 0.0,
               mask_self_attention: bool = False, location_scale_dim: int = 2,
               location_refine: bool = False, class_prior_probability: float = 0.01,
               **kwargs):
    super().__init__(**kwargs)
    if num_mask_layers < 1:
      raise ValueError("PanopticSegFormerDecoder.num_mask_layers must be >= 1.")
    self.num_queries = num_queries
    self.location_strides = tuple(location_strides)
    self.mask_strides = tuple(mask_strides)
    self.hidden_dim = hidden_dim
    self._num_heads = num_heads
    self._queries = self.add_weight(
        "query_embed", shape=[num_queries, 2 * hidden_dim],
        initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=True)
    self._reference = keras.layers.Dense(2, kernel_initializer="glorot_uniform",
                                         name="reference_points")
    self._location_layers = [
        LocationDecoderLayer(hidden_dim, num_heads, len(self.location_strides), num_points,
                             ffn_dim, dropout, name=f"location_layer{i}")
        for i in range(num_location_layers)]
    if location_refine and location_scale_dim != 2:
      raise ValueError("PanopticSegFormerDecoder.location_refine needs location_scale_dim = 2 "
                       f"(boxes), got {location_scale_dim}.")
    self._location_refine = location_refine
    if location_refine:
      # Deformable DETR's box-head init: zero deltas, sizes start at sigmoid(-2).
      self._location_heads = [
          MLP(hidden_dim, 4, 3, last_kernel_init="zeros",
              last_bias_init=keras.initializers.Constant([0.0, 0.0, -2.0, -2.0]),
              name=f"location_head{i}")
          for i in range(num_location_layers)]
    else:
      self._location_head = MLP(hidden_dim, 2 + location_scale_dim, 3, name="location_head")
    self._mask_layers = [MaskDecoderLayer(hidden_dim, num_heads, mask_ffn_dim, mask_dropout,
                                          mask_self_attention, name=f"mask_layer{i}")
                         for i in range(num_mask_layers)]
    prior = -math.log((1.0 - class_prior_probability) / class_prior_probability)
    self._class = keras.layers.Dense(num_classes + 1,
                                     bias_initializer=keras.initializers.Constant(prior),
                                     name="class")
    # The 1x1 conv over the concatenated (levels x heads) attention maps.
    self._mask_fuse = keras.layers.Dense(1, name="mask_fuse")

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """The centre/scale head: supervised by L_loc, dropped at inference (with
    location_refine the heads place the reference boxes, so none)."""
    return [] if self._location_refine else [self._location_head]

  def _levels(self, features: Dict[str, tf.Tensor], strides: Sequence[int]):
    missing = [f"stride{s}" for s in strides if f"stride{s}" not in features]
    if missing:
      raise ValueError(f"PanopticSegFormerDecoder needs the pixel-decoder outputs {missing}; "
                       f"it gives {sorted(features)}.")
    return flatten_levels([features[f"stride{s}"] for s in strides])

  def _predict(self, tgt: tf.Tensor, logits: tf.Tensor,
               shapes: Sequence[Tuple[int, int]]) -> Dict[str, tf.Tensor]:
    """Class and mask logits from refined queries and attention logits [B, h, N, S]."""
    kernel = tf.reshape(self._mask_fuse.kernel, [len(shapes), self._num_heads])
    size = shapes[0]
    masks = 0.0
    start = 0
    for level, (h, w) in enumerate(shapes):
      level_logits = logits[..., start:start + h * w]            # [B, heads, N, h*w]
      start += h * w
      fused = tf.einsum("bmnp,m->bpn", level_logits, kernel[level])
      fused = tf.reshape(fused, [-1, h, w, self.num_queries])
      masks += resize.resize_bilinear(fused, size)
    return {common.PRED_CLASS_LOGITS: self._class(tgt),
            common.PRED_MASK_LOGITS: masks + self._mask_fuse.bias}

  def call(self, features: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    if not self._mask_fuse.built:
      self._mask_fuse.build([None, len(self.mask_strides) * self._num_heads])
    memory, shapes = self._levels(features, self.location_strides)
    batch = tf.shape(memory)[0]
    queries = tf.tile(self._queries[tf.newaxis], [batch, 1, 1])
    query_pos, tgt = tf.split(queries, 2, axis=-1)
    # Reference points and boxes stay float32 under mixed precision: they address pixels.
    reference = tf.sigmoid(tf.cast(self._reference(query_pos), tf.float32))  # [B, N, 2] (x, y)
    boxes = []
    for i, layer in enumerate(self._location_layers):
      reference_levels = tf.tile(reference[:, :, tf.newaxis], [1, 1, len(shapes), 1])
      tgt = layer(tgt, query_pos, reference_levels, memory, shapes, training=training)
      if self._location_refine:
        delta = self._location_heads[i](tgt)                       # [B, N, 4]
        # A 2-d reference refines the centre; the size starts from the delta.
        prior = inverse_sigmoid(reference)
        if prior.shape[-1] == 2:
          prior = tf.pad(prior, [[0, 0], [0, 0], [0, 2]])
        boxes.append(tf.sigmoid(tf.cast(delta, tf.float32) + prior))  # (cx, cy, w, h)
        # Detached, as Deformable DETR: each layer's box is supervised on its own.
        reference = tf.stop_gradient(boxes[-1])
    location_queries = tgt

    mask_memory, mask_shapes = self._levels(features, self.mask_strides)
    memory_pos = tf.cast(level_positional_encodings(mask_shapes, self.hidden_dim),
                         mask_memory.dtype)[tf.newaxis]
    predictions = []
    for layer in self._mask_layers:
      tgt, logits = layer(tgt, query_pos, mask_memory, memory_pos, training=training)
      predictions.append(self._predict(tgt, logits, mask_shapes))
    outputs = dict(predictions[-1])
    outputs[common.AUX_OUTPUTS] = predictions[:-1]
    if training:
      if self._location_refine:
        # (cx, cy, w, h) -> centre (y, x) and scale (h, w), the loss's order.
        locations = [{common.PRED_LOCATION_CENTER: tf.gather(box, [1, 0], axis=-1),
                      common.PRED_LOCATION_SCALE: tf.gather(box, [3, 2], axis=-1)}
                     for box in boxes]
        outputs.update(locations[-1])
        outputs[AUX_LOCATIONS] = locations[:-1]
      else:
        location = tf.sigmoid(self._location_head(location_queries))
        outputs[common.PRED_LOCATION_CENTER] = location[..., :2]
        outputs[common.PRED_LOCATION_SCALE] = location[..., 2:]
    return outputs
