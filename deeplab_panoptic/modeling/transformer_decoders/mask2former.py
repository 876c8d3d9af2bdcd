"""Mask2Former's masked-attention transformer decoder (Cheng et al., CVPR 2022).

arXiv 2112.01527, Sec. 3.2 and Fig. 2: N learnable query features (and N
learnable query positional embeddings) go through layers that each run

  masked cross-attention -> self-attention -> FFN   (post-norm, Sec. 3.2.4)

cycling over the pixel decoder's 1/32, 1/16 and 1/8 features (round robin,
Sec. 3.2.2). Every memory level gets its own input projection (the identity
when the widths already match, as the authors' code), a learned level embedding,
and the sine positional encoding of its position (added to the keys only).

A prediction is made before the first layer and after every layer (Sec. 3.2.1,
deep supervision): a shared LayerNorm on the queries, then class logits (one
linear layer) and mask logits (a 3-layer MLP mask embedding dotted with the
1/4 mask features). The cross-attention of layer ``l`` attends only where the
previous prediction's mask, bilinearly resized to the layer's level, has
``sigmoid >= attention_mask_threshold`` (eq. 2-3); a query whose resized mask is
empty everywhere attends everywhere (the authors' fallback).

Bilinear resizing is linear per channel, so the resized mask logits equal the
mask embedding dotted with the mask features resized to the level. The
attention masks are computed that way (the mask features are resized once per
level): the full-resolution masks of the earlier predictions are then only
needed by the deep-supervision losses, and a graph that does not return them
(an export) does not compute them.

Layouts and names follow Hugging Face transformers'
``Mask2FormerTransformerModule`` (models/mask2former/modeling_mask2former.py), so
that ``deeplab_panoptic/tools/hf_mask2former/transformer_decoder.py`` can load its
weights; that module's ``config.decoder_layers`` counts the initial prediction
too (10 there is ``num_layers = 9`` here).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.feed_forward import FeedForward
from deeplab_panoptic.modeling.layers.multi_head import check_head_widths
from deeplab_panoptic.modeling.layers.positional_encoding import sine_positional_encoding
from deeplab_panoptic.ops import resize


class MaskedAttention(keras.layers.Layer):
  """Multi-head attention with a boolean block mask (q, k, v, output projections with bias).

  Inputs: query ``[batch, Q, dim]``, key ``[batch, S, dim]``, value ``[batch, S, dim]``,
  optional ``blocked`` bool ``[batch, Q, S]`` (True: query may not attend there; the
  same for every head; no row may be blocked everywhere).
  Output: ``[batch, Q, dim]``.
  """

  def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    check_head_widths(type(self).__name__, num_heads, dim=dim)
    self._heads = num_heads
    self._head_dim = dim // num_heads
    self.q = keras.layers.Dense(dim, name="q")
    self.k = keras.layers.Dense(dim, name="k")
    self.v = keras.layers.Dense(dim, name="v")
    self.out = keras.layers.Dense(dim, name="out")
    self._drop = keras.layers.Dropout(dropout)

  def _split(self, x: tf.Tensor) -> tf.Tensor:
    return tf.reshape(x, [-1, x.shape[1], self._heads, self._head_dim])

  def call(self, query, key, value, blocked: Optional[tf.Tensor] = None, training=None):
    q = self._split(self.q(query)) * (self._head_dim ** -0.5)
    k = self._split(self.k(key))
    v = self._split(self.v(value))
    logits = tf.einsum("bqhd,bshd->bhqs", q, k)
    if blocked is not None:
      # The dtype's lowest value: exp() of it is 0 in softmax, without inf - inf.
      logits = tf.where(blocked[:, tf.newaxis], tf.cast(logits.dtype.min, logits.dtype),
                        logits)
    attention = self._drop(tf.nn.softmax(logits, axis=-1), training=training)
    out = tf.einsum("bhqs,bshd->bqhd", attention, v)
    return self.out(tf.reshape(out, [-1, query.shape[1], self._heads * self._head_dim]))


class MaskedAttentionLayer(keras.layers.Layer):
  """Masked cross-attention -> self-attention -> FFN, each residual + post-LayerNorm.

  ``call(tgt, query_pos, memory, memory_pos, blocked)``: queries ``tgt`` and
  ``query_pos`` ``[batch, N, dim]``, one level's ``memory`` ``[batch, S, dim]`` and
  its positional encoding ``memory_pos`` ``[1, S, dim]``, ``blocked`` bool
  ``[batch, N, S]``. Returns the queries ``[batch, N, dim]``.
  """

  def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float,
               layer_norm_epsilon: float, **kwargs):
    super().__init__(**kwargs)
    self.cross_attn = MaskedAttention(dim, num_heads, dropout, name="cross_attn")
    self.cross_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                      name="cross_norm")
    self.self_attn = MaskedAttention(dim, num_heads, dropout, name="self_attn")
    self.self_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                     name="self_norm")
    self.ffn = FeedForward(dim, ffn_dim, dropout, name="ffn")
    self.ffn_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                    name="ffn_norm")
    self._drop1 = keras.layers.Dropout(dropout)
    self._drop2 = keras.layers.Dropout(dropout)

  def call(self, tgt, query_pos, memory, memory_pos, blocked, training=None):
    attended = self.cross_attn(tgt + query_pos, memory + memory_pos, memory, blocked,
                               training=training)
    tgt = self.cross_norm(tgt + self._drop1(attended, training=training))
    q = tgt + query_pos
    attended = self.self_attn(q, q, tgt, training=training)
    tgt = self.self_norm(tgt + self._drop2(attended, training=training))
    return self.ffn_norm(tgt + self.ffn(tgt, training=training))


class MaskEmbedding(keras.layers.Layer):
  """``num_layers`` dense layers, ReLU between them: ``[..., dim]`` -> ``[..., output_dim]``."""

  def __init__(self, hidden_dim: int, output_dim: int, num_layers: int, **kwargs):
    super().__init__(**kwargs)
    self.dense = [keras.layers.Dense(hidden_dim, activation="relu", name=f"fc{i}")
                  for i in range(num_layers - 1)]
    self.dense.append(keras.layers.Dense(output_dim, name=f"fc{num_layers - 1}"))

  def call(self, x):
    for layer in self.dense:
      x = layer(x)
    return x


def blocked_positions(level_mask_logits: tf.Tensor, threshold: float) -> tf.Tensor:
  """Where each query may not attend: ``sigmoid(logit) < threshold``, none for an empty mask.

  Args:
    level_mask_logits: ``[batch, h, w, N]`` mask logits at the level's size.
    threshold: the probability below which a position is masked (0.5).

  Returns:
    bool ``[batch, N, h * w]``: True where blocked; a query blocked at every
    position is blocked nowhere (it attends to the whole level).
  """
  shape = level_mask_logits.shape
  logits = tf.reshape(tf.cast(level_mask_logits, tf.float32), [-1, shape[1] * shape[2], shape[3]])
  blocked = tf.transpose(tf.sigmoid(logits) < threshold, [0, 2, 1])
  # Attention masks come from a hard threshold: no gradient flows through them.
  everywhere = tf.reduce_all(blocked, axis=-1, keepdims=True)
  return tf.logical_and(blocked, tf.logical_not(everywhere))


@gin.configurable
class Mask2FormerDecoder(base.TransformerDecoder):
  """Masked-attention decoder that makes the class and mask predictions itself.

  Input: pixel-decoder features ``{"stride<s>": [batch, H/s, W/s, c]}`` holding
  every stride of ``level_strides`` (width ``hidden_dim``, or any width with
  ``input_projection``) and ``mask_stride`` (the mask features, width
  ``mask_dim``).
  Output: common.PRED_CLASS_LOGITS ``[batch, N, num_classes + 1]`` (the last is
  "no object"), PRED_MASK_LOGITS ``[batch, H/m, W/m, N]`` (m = ``mask_stride``)
  of the last layer, and AUX_OUTPUTS: the ``num_layers`` earlier predictions
  (the one before the first layer first), each a dict of the same two keys.

  Args:
    num_classes: semantic classes (without "no object").
    num_queries: N (100; 200 for Swin-L).
    hidden_dim: width of the queries and attention (256).
    num_heads: attention heads (8).
    ffn_dim: FFN hidden width (2048).
    num_layers: decoder layers (9), each followed by a prediction.
    level_strides: the memory levels, in the order the layers cycle over them
      (32, 16, 8): layer ``i`` attends to ``level_strides[i % len(level_strides)]``.
    mask_stride: stride of the mask features (4).
    mask_dim: width of the mask features and the mask embedding (256).
    mask_embedding_layers: layers of the mask-embedding MLP (3).
    input_projection: a 1x1 projection (a dense layer) of each level to
      ``hidden_dim``; without, every level must be ``hidden_dim`` wide.
    attention_mask_threshold: a position is masked for a query where the
      previous prediction's mask probability is below this (0.5).
    dropout: dropout of attention, FFN and residuals (0.0, as the authors).
    layer_norm_epsilon: of every LayerNorm (1e-5, torch's default).
  """

  predicts_outputs = True

  def __init__(self, num_classes: int = gin.REQUIRED, num_queries: int = 100,
               hidden_dim: int = 256, num_heads: int = 8, ffn_dim: int = 2048,
               num_layers: int = 9, level_strides: Sequence[int] = (32, 16, 8),
               mask_stride: int = 4, mask_dim: int = 256, mask_embedding_layers: int = 3,
               input_projection: bool = False, attention_mask_threshold: float = 0.5,
               dropout: float = 0.0, layer_norm_epsilon: float = 1e-5, **kwargs):
    super().__init__(**kwargs)
    if num_layers < 1 or not level_strides:
      raise ValueError("Mask2FormerDecoder needs num_layers >= 1 and at least one level "
                       f"stride, got num_layers={num_layers}, level_strides={level_strides}.")
    check_head_widths("Mask2FormerDecoder", num_heads, hidden_dim=hidden_dim)
    self.num_queries = num_queries
    self.hidden_dim = hidden_dim
    self.level_strides = tuple(int(s) for s in level_strides)
    self.mask_stride = int(mask_stride)
    self.mask_dim = mask_dim
    self.attention_mask_threshold = attention_mask_threshold
    # N(0, 1), as torch's nn.Embedding (the authors' queries and level embedding).
    self.query_features = self.add_weight(
        "query_features", shape=[num_queries, hidden_dim],
        initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=True)
    self.query_pos = self.add_weight(
        "query_pos", shape=[num_queries, hidden_dim],
        initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=True)
    self.level_embed = self.add_weight(
        "level_embed", shape=[len(self.level_strides), hidden_dim],
        initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=True)
    self.input_projections = ([keras.layers.Dense(hidden_dim, name=f"input_projection{i}")
                               for i in range(len(self.level_strides))]
                              if input_projection else None)
    self.decoder_layers = [
        MaskedAttentionLayer(hidden_dim, num_heads, ffn_dim, dropout, layer_norm_epsilon,
                             name=f"layer{i}") for i in range(num_layers)]
    self.decoder_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                        name="decoder_norm")
    self.class_head = keras.layers.Dense(num_classes + 1, name="class")
    self.mask_embedding = MaskEmbedding(hidden_dim, mask_dim, mask_embedding_layers,
                                        name="mask_embedding")

  def _inputs(self, features: Dict[str, tf.Tensor]):
    """The levels' memories ``[batch, h*w, hidden_dim]``, sizes, positional encodings
    ``[1, h*w, hidden_dim]`` and the mask features ``[batch, H/m, W/m, mask_dim]``."""
    wanted = [base.stride_key(s) for s in self.level_strides + (self.mask_stride,)]
    missing = [key for key in wanted if key not in features]
    if missing:
      raise ValueError(f"Mask2FormerDecoder needs the pixel-decoder outputs {missing}; it "
                       f"gives {sorted(features)}.")
    memories, sizes, positions = [], [], []
    for i, stride in enumerate(self.level_strides):
      level = features[base.stride_key(stride)]
      _, h, w, channels = level.shape
      if self.input_projections is not None:
        level = self.input_projections[i](level)
      elif channels != self.hidden_dim:
        raise ValueError(f"Mask2FormerDecoder: the pixel decoder's {base.stride_key(stride)} "
                         f"is {channels} wide, hidden_dim is {self.hidden_dim}; set "
                         "Mask2FormerDecoder.input_projection = True or match the widths.")
      level = level + tf.cast(self.level_embed[i], level.dtype)
      memories.append(tf.reshape(level, [-1, h * w, self.hidden_dim]))
      sizes.append((h, w))
      encoding = sine_positional_encoding(h, w, self.hidden_dim // 2, offset=0.0)
      positions.append(tf.cast(tf.reshape(encoding, [1, h * w, self.hidden_dim]), level.dtype))
    mask_features = features[base.stride_key(self.mask_stride)]
    if mask_features.shape[-1] != self.mask_dim:
      raise ValueError(f"Mask2FormerDecoder: the mask features {base.stride_key(self.mask_stride)} "
                       f"are {mask_features.shape[-1]} wide, mask_dim is {self.mask_dim}.")
    return memories, sizes, positions, mask_features

  def _predict(self, tgt: tf.Tensor, mask_features: tf.Tensor
               ) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
    """Prediction from the queries ``[batch, N, dim]``: ({class, mask logits}, the mask
    embedding ``[batch, N, mask_dim]``)."""
    normed = self.decoder_norm(tgt)
    embedding = self.mask_embedding(normed)
    masks = tf.einsum("bhwc,bnc->bhwn", mask_features, embedding)
    return {common.PRED_CLASS_LOGITS: self.class_head(normed),
            common.PRED_MASK_LOGITS: masks}, embedding

  def call(self, features: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    memories, sizes, positions, mask_features = self._inputs(features)
    # The mask features at each level's size: the attention masks' logits (module doc).
    level_features = [resize.resize_bilinear(mask_features, size) for size in sizes]
    batch = tf.shape(memories[0])[0]
    dtype = memories[0].dtype
    tgt = tf.tile(tf.cast(self.query_features, dtype)[tf.newaxis], [batch, 1, 1])
    query_pos = tf.tile(tf.cast(self.query_pos, dtype)[tf.newaxis], [batch, 1, 1])
    prediction, embedding = self._predict(tgt, mask_features)
    predictions = [prediction]
    for i, layer in enumerate(self.decoder_layers):
      level = i % len(self.level_strides)
      level_logits = tf.einsum("bhwc,bnc->bhwn", level_features[level], embedding)
      blocked = blocked_positions(level_logits, self.attention_mask_threshold)
      tgt = layer(tgt, query_pos, memories[level], positions[level], blocked,
                  training=training)
      prediction, embedding = self._predict(tgt, mask_features)
      predictions.append(prediction)
    outputs = dict(predictions[-1])
    outputs[common.AUX_OUTPUTS] = predictions[:-1]
    return outputs

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """None: every head also makes the attention masks at inference."""
    return []
