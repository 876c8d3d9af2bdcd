"""CMT-DeepLab clustering mask transformer layer (Yu et al., CVPR 2022, section 3).

The layer is MaX-DeepLab's dual-path layer (``dual_path.py``: M2P + M2M under one
softmax, memory FFN, P2M) with the memory slots read as cluster centres:

  * clustering logits (eq. 6): ``S_l = S_{l-1} + K~p (Q~c)^T / sqrt(d)``, with the
    pixel-query and memory-key projections of the P2M branch as ``K~p`` and
    ``Q~c`` (so clustering adds no projection; Tab. 2c reports the clustering
    setting at the baseline's 61.9M), one head over the full key width so that
    every layer's assignment has the format of the final mask output and can be
    supervised; ``S_0 = 0``; ``Z = softmax_N(S_l)``;
  * centre update (eq. 5 + 7): MaX's M2P/M2M retrieval plus ``Z^T V^p`` (a sum
    over pixels, batch-normalised per channel, as kMaX normalises its k-means
    sum, before the two are added and activated);
  * pixel update (eq. 8): ``F + Z V^c`` replaces P2M's softmax over memory keys;
  * location-sensitive clustering (eq. 9-12): reference masks of M points per
    centre, ``e_l = e_{l-1} + MLP(C)`` (``e_0 = 0``), ``r^c = sigmoid(e_l)``, and
    coord-convs on the bottleneck centres (1x1 on ``[C, r^c]``) and pixels
    (``k x k`` conv on ``[F, r^p]``) at the start of the layer.

With ``clustering=False, location=False`` it computes exactly what
``DualPathTransformerLayer`` computes (tested), so the ablations of Tab. 2c are
one class with two switches.

The state carried from layer to layer (through the encoder / decoder's
``MEMORY`` endpoint) is a dict: ``STATE_MEMORY`` ``[B, N, C]``, and when present
``STATE_LOGITS`` ``[B, h, w, N]`` (S), ``STATE_REFERENCE`` ``[B, N, 2M]`` (e) and
``STATE_STAGES``, the list of per-layer outputs read by the CMT head (each a dict
of ``STAGE_*`` keys). The first layer also accepts the bare memory tensor.
"""

import math
from typing import Any, Dict, List

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.ops import resize
from deeplab_panoptic.modeling.layers.coord_conv import coordinate_grid
from deeplab_panoptic.modeling.layers.dual_path import (
    AttentionOperation, DenseBN, DualPathConfig, DualPathTransformerLayer)

STATE_MEMORY = "memory"
STATE_LOGITS = "clustering_logits"
STATE_REFERENCE = "reference_embedding"
STATE_STAGES = "stages"
# Per-layer outputs (one dict per layer in STATE_STAGES).
STAGE_MEMORY = "memory"                  # [B, N, C] centres after the layer.
STAGE_LOGITS = "clustering_logits"       # [B, h, w, N] S_l (eq. 6), pre-softmax.
STAGE_PIXELS = "pixels"                  # [B, h, w, C_pixel] pixels after the layer.
STAGE_REFERENCE_POINTS = "reference_points"  # [B, N, M, 2] (y, x) in [0, 1].


def memory_of(state) -> tf.Tensor:
  """The memory ``[B, N, C]`` of a CMT state dict or a bare memory tensor."""
  return state[STATE_MEMORY] if isinstance(state, dict) else state


def reference_points(embedding: tf.Tensor, num_points: int) -> tf.Tensor:
  """Reference mask of eq. 10: ``[B, N, 2M]`` embedding -> ``[B, N, M, 2]`` (y, x).

  The first M entries are the heights ``r^{c,h}``, the last M the widths.
  """
  points = tf.sigmoid(embedding)
  return tf.stack([points[..., :num_points], points[..., num_points:]], axis=-1)


class ClusteringDualPathLayer(DualPathTransformerLayer):
  """Dual-path layer with CMT's clustering and location-sensitive updates.

  Inputs: ``(pixel [B, h, w, C_pixel]`` non-activated, ``state)`` (dict, or the
  bare memory ``[B, N, C]`` activated). Outputs: ``(pixel [B, h, w, C_pixel]``
  non-activated, ``state`` dict with the updated memory and, when clustering or
  location is on, S, e and this layer's entry appended to the stages).

  Args (beyond ``DualPathTransformerLayer``'s):
    clustering: eqs. 5-8 (the clustering centre and pixel updates).
    location: eqs. 9-12 (reference masks and coord-convs).
    num_reference_points: M (CMT: 8).
    reference_mlp_dim: hidden width of the two-layer reference MLP.
    pixel_coord_kernel: kernel size of the pixel coord-conv.
  """

  def __init__(self, bottleneck_dim: int = 256, key_dim: int = 128, value_dim: int = 256,
               num_heads: int = 8, ffn_dim: int = 2048, activation: str = "gelu",
               drop_path_rate: float = 0.0, clustering: bool = True,
               location: bool = True, num_reference_points: int = 8,
               reference_mlp_dim: int = 256, pixel_coord_kernel: int = 3, **kwargs):
    super().__init__(bottleneck_dim, key_dim, value_dim, num_heads, ffn_dim, activation,
                     drop_path_rate, **kwargs)
    self.clustering = clustering
    self.location = location
    self.num_reference_points = num_reference_points
    # The retrievals are activated after the clustering term is added (eq. 7).
    self._memory_attention = AttentionOperation("none", name="memory_attention")
    self._pixel_attention = AttentionOperation("none", name="pixel_attention")
    if clustering:
      self._cluster_value_bn = conv.batch_norm(name="cluster_update_bn")
      self._pixel_value_bn = conv.batch_norm(name="pixel_update_bn")
    if location:
      self._reference_hidden = keras.layers.Dense(reference_mlp_dim, name="reference_mlp1")
      self._reference_out = keras.layers.Dense(
          2 * num_reference_points, name="reference_mlp2",
          kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))
      self._memory_coord = DenseBN(bottleneck_dim, activation, name="memory_coord_conv")
      self._pixel_coord = conv.ConvBN(bottleneck_dim, pixel_coord_kernel,
                                      activation=activation, name="pixel_coord_conv")

  def build(self, input_shape):
    pixel_shape, state_shape = input_shape
    super().build((pixel_shape, memory_of(state_shape)))

  def call(self, inputs, training=None):
    pixel_input, state = inputs
    memory_input = memory_of(state)
    state = dict(state) if isinstance(state, dict) else {STATE_MEMORY: state}
    _, height, width, c_pixel = pixel_input.shape.as_list()
    pixel_flat = tf.reshape(pixel_input, [-1, height * width, c_pixel])
    memory = self._memory_conv1(memory_input, training=training)
    pixel = self._pixel_conv1(self._act(pixel_flat), training=training)
    stage = {}

    if self.location:
      # Eq. 9-10: the reference embedding is refined residually across layers.
      update = self._reference_out(self._act(self._reference_hidden(memory_input)))
      embedding = update + state[STATE_REFERENCE] if STATE_REFERENCE in state else update
      state[STATE_REFERENCE] = embedding
      points = tf.sigmoid(embedding)                              # [B, N, 2M]
      stage[STAGE_REFERENCE_POINTS] = reference_points(embedding, self.num_reference_points)
      # Eq. 11-12: coordinates enter both paths before any attention.
      memory = self._memory_coord(tf.concat([memory, points], axis=-1), training=training)
      grid = coordinate_grid(height, width, pixel.dtype)
      pixel_2d = tf.reshape(pixel, [-1, height, width, pixel.shape[-1]])
      grid = tf.broadcast_to(grid[None], tf.concat([tf.shape(pixel_2d)[:3], [2]], 0))
      pixel = tf.reshape(self._pixel_coord(tf.concat([pixel_2d, grid], axis=-1),
                                           training=training),
                         [-1, height * width, pixel.shape[-1]])

    (_, m_k, m_v, p_q, _, p_v), (m_q_h, m_k_h, m_v_h, p_q_h, p_k_h, p_v_h) = (
        self._queries_keys_values(memory, pixel, training))

    if self.clustering:
      # Eq. 6: this layer's affinities plus the previous layer's (residual).
      logits = tf.einsum("bpd,bnd->bpn", p_q, m_k) / math.sqrt(self.key_dim)
      logits = tf.reshape(logits, [-1, height, width, logits.shape[-1]])
      if STATE_LOGITS in state:
        logits = logits + resize.resize_bilinear(state[STATE_LOGITS], (height, width))
      state[STATE_LOGITS] = logits
      stage[STAGE_LOGITS] = logits
      assignment = tf.nn.softmax(tf.reshape(logits, [-1, height * width,
                                                     logits.shape[-1]]), axis=-1)

    # M2P + M2M (MaX eq. 14), plus the clustering update Z^T V^p (eq. 5, 7).
    keys = tf.concat([p_k_h, m_k_h], axis=2)
    values = tf.concat([p_v_h, m_v_h], axis=1)
    update = self._memory_attention((m_q_h, keys, values), training=training)
    if self.clustering:
      pooled = tf.einsum("bpn,bpd->bnd", assignment, p_v)
      update = update + self._cluster_value_bn(pooled, training=training)
    update = self._memory_conv3(self._act(update), training=training)
    memory_out = self._act(memory_input + self._drop_memory_attention(update,
                                                                      training=training))
    update = self._ffn2(self._ffn1(memory_out, training=training), training=training)
    memory_out = self._act(memory_out + self._drop_ffn(update, training=training))

    # Pixel update: P2M (MaX eq. 13) or, clustering, F + Z V^c (eq. 8).
    if self.clustering:
      update = self._pixel_value_bn(tf.einsum("bpn,bnd->bpd", assignment, m_v),
                                    training=training)
    else:
      update = self._pixel_attention((p_q_h, m_k_h, m_v_h), training=training)
    update = self._pixel_conv3(self._act(update), training=training)
    pixel_out = pixel_flat + self._drop_pixel(update, training=training)
    pixel_out = tf.reshape(pixel_out, [-1, height, width, c_pixel])

    state[STATE_MEMORY] = memory_out
    if stage:
      stage[STAGE_MEMORY] = memory_out
      stage[STAGE_PIXELS] = pixel_out
      state[STATE_STAGES] = list(state.get(STATE_STAGES, [])) + [stage]
    return pixel_out, state


@gin.configurable
class CMTLayerConfig(DualPathConfig):
  """Widths and switches of CMT layers; a drop-in ``DualPathConfig``.

  ``AxialResNet.dual_path`` / ``MaXPixelDecoder.dual_path`` take it in place of a
  ``DualPathConfig``: the same widths (MaX-S defaults), and every layer they make
  is a ``ClusteringDualPathLayer``.

  Args:
    clustering, location, num_reference_points, reference_mlp_dim,
      pixel_coord_kernel: as ``ClusteringDualPathLayer``.
    **widths: ``num_memory``, ``memory_dim``, ``bottleneck_dim``, ``key_dim``,
      ``value_dim``, ``num_heads``, ``ffn_dim``, as ``DualPathConfig``.
  """

  layer_class = ClusteringDualPathLayer

  def __init__(self, clustering: bool = True, location: bool = True,
               num_reference_points: int = 8, reference_mlp_dim: int = 256,
               pixel_coord_kernel: int = 3, **widths: int):
    super().__init__(**widths)
    self.clustering = clustering
    self.location = location
    self.num_reference_points = num_reference_points
    self.reference_mlp_dim = reference_mlp_dim
    self.pixel_coord_kernel = pixel_coord_kernel

  def layer_options(self) -> Dict[str, Any]:
    return dict(clustering=self.clustering, location=self.location,
                num_reference_points=self.num_reference_points,
                reference_mlp_dim=self.reference_mlp_dim,
                pixel_coord_kernel=self.pixel_coord_kernel)


def stages_of(state: Any) -> List[dict]:
  """Per-layer outputs of a CMT state (empty for a bare memory tensor)."""
  return list(state.get(STATE_STAGES, [])) if isinstance(state, dict) else []
