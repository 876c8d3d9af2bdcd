"""kMaX-DeepLab transformer decoder: cluster centres refined by k-means cross-attention."""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.aspp import ReMaXSemanticHead
from deeplab_panoptic.modeling.layers.kmeans_attention import KMaXTransformerLayer
from deeplab_panoptic.modeling.layers.mask_predictor import MaskTransformerPredictor


@gin.configurable
class KMaXTransformerDecoder(base.TransformerDecoder):
  """Stacks of kMaX transformer layers over the pixel decoder's coarse-to-fine features.

  Input: pixel-decoder features ``{"stride<s>": [batch, H/s, W/s, c_s]}``.
  Output: ``(class_embedding [batch, N, d], mask_embedding [batch, N, d], aux)``,
  where ``aux`` is the list of per-layer predictions (one dict per layer, made
  with the centres entering that layer). With ReMaX (``remax_num_stages`` > 0)
  the first ``remax_num_stages`` dicts also hold, in training only,
  common.PRED_STAGE_SEMANTIC_LOGITS ``[batch, H/s, W/s, num_classes]`` from a
  training-only semantic head on that layer's k-means key (one head per layer:
  the paper does not say they are shared, and the strides differ); these heads
  are ``training_only_layers`` and never run at inference.

  Args:
    num_centers: N, the number of cluster centres (mask slots).
    strides: pixel strides the stages attend to, e.g. (32, 16, 8).
    num_blocks: layers per stage, e.g. (2, 2, 2).
    center_dim: width of the centres.
    bottleneck_dim: width inside the layers.
    num_heads: self-attention heads.
    key_dim: total query/key width of self-attention.
    ffn_dim: hidden width of the feed-forward network.
    activation: activation function.
    drop_path_rate: drop path of every branch.
    predictor_factory: builds each layer's auxiliary predictor.
    remax_num_stages: ReMaX: layers [0, this) get a semantic head for ReMask
      (ReMaX: 4 of the 6 layers of [2, 2, 2]; 0 disables). Must not exceed the
      number of layers; bind ReMask.num_stages (configs/losses/remax.gin) to
      the same value.
    remax_head_factory: builds each ReMaX semantic head (called with ``name``).
    similarity_batch_norm: self-attention logits get a per-head batch norm
      (deeplab2) instead of the 1/sqrt(depth) scale.
  """

  def __init__(self, num_centers: int = 128, strides: Sequence[int] = (32, 16, 8),
               num_blocks: Sequence[int] = (2, 2, 2), center_dim: int = 256,
               bottleneck_dim: int = 256, num_heads: int = 8, key_dim: int = 128,
               ffn_dim: int = 2048, activation: str = "gelu", drop_path_rate: float = 0.0,
               predictor_factory: Callable[..., keras.layers.Layer] = MaskTransformerPredictor,
               remax_num_stages: int = 0,
               remax_head_factory: Callable[..., keras.layers.Layer] = ReMaXSemanticHead,
               similarity_batch_norm: bool = True, **kwargs):
    super().__init__(**kwargs)
    if len(strides) != len(num_blocks):
      raise ValueError(f"KMaXTransformerDecoder: strides {strides} and num_blocks "
                       f"{num_blocks} must have the same length.")
    self.num_centers = num_centers
    self._act = conv.get_activation(activation)
    self._centers = self.add_weight(
        "cluster_centers", shape=[1, num_centers, center_dim],
        initializer=keras.initializers.TruncatedNormal(stddev=1.0), trainable=True)
    num_layers = sum(num_blocks)
    if not 0 <= remax_num_stages <= num_layers:
      # The final prediction is made on the pixel decoder's output, not on a
      # k-means key, so only the layers' own predictions can take a head.
      raise ValueError(f"KMaXTransformerDecoder.remax_num_stages must be in [0, "
                       f"{num_layers}] (the number of layers), got {remax_num_stages}.")
    self._layers: List[Tuple[str, KMaXTransformerLayer]] = []
    self._remax_heads: List[keras.layers.Layer] = []
    for s, n in zip(strides, num_blocks):
      for j in range(n):
        semantic_head: Optional[keras.layers.Layer] = None
        if len(self._layers) < remax_num_stages:
          semantic_head = remax_head_factory(name=f"remax_semantic_head_s{s}_{j}")
          base.check_part("KMaXTransformerDecoder", "remax_head_factory()", semantic_head,
                          base.FeatureHead)
          self._remax_heads.append(semantic_head)
        predictor = predictor_factory(name=f"aux_predictor_s{s}_{j}")
        base.check_part("KMaXTransformerDecoder", "predictor_factory()", predictor,
                        base.MaskPredictor)
        layer = KMaXTransformerLayer(
            center_dim, bottleneck_dim, num_heads, key_dim, bottleneck_dim, ffn_dim,
            predictor=predictor,
            activation=activation, drop_path_rate=drop_path_rate,
            semantic_head=semantic_head, similarity_batch_norm=similarity_batch_norm,
            name=f"kmax_layer_s{s}_{j}")
        self._layers.append((f"stride{s}", layer))
    self._class_embedding = keras.layers.Dense(center_dim, use_bias=False,
                                               name="class_embedding")
    self._class_embedding_bn = conv.batch_norm(name="class_embedding_bn")
    self._mask_embedding = keras.layers.Dense(center_dim, use_bias=False,
                                              name="mask_embedding")
    self._mask_embedding_bn = conv.batch_norm(name="mask_embedding_bn")

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """The ReMaX semantic heads (excluded from params and inference)."""
    return list(self._remax_heads)

  def call(self, features: Dict[str, tf.Tensor], training=None):
    batch = tf.shape(next(iter(features.values())))[0]
    centers = tf.tile(self._centers, [batch, 1, 1])
    aux = []
    for key, layer in self._layers:
      if key not in features:
        raise ValueError(f"KMaXTransformerDecoder needs the pixel-decoder output {key!r}; "
                         f"it gives {sorted(features)}.")
      centers, prediction = layer(features[key], centers, training=training)
      aux.append(prediction)
    class_embedding = self._act(self._class_embedding_bn(
        self._class_embedding(centers), training=training))
    mask_embedding = self._act(self._mask_embedding_bn(
        self._mask_embedding(centers), training=training))
    return class_embedding, mask_embedding, aux
