"""CMT-DeepLab head: final predictions plus every layer's supervised clustering.

As in MaX-DeepLab, CMT's transformer layers live in the pixel encoder / decoder
(``layers/cmt_layer.py``, made by ``CMTLayerConfig``) and leave their state under
the ``MEMORY`` endpoint. This part turns that state into the output dict:

  * final output: MaX's memory heads (1x1 + BN + activation for the class and the
    mask embedding) and the predictor at ``output_stride``; with location, the
    last layer's reference points (PRED_REFERENCE_POINTS, for eq. 13);
  * auxiliary outputs (``deep_supervision``): one per clustering layer, its
    clustering logits S_l as mask logits (eq. 6: "every layer's clustering has the
    same format as the final output", so ground truth supervises it), class
    logits and a pixel embedding from training-only heads on that layer's centres
    and pixels, and its reference points.
"""

import math
from typing import Dict, List, Optional

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.common import MEMORY
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers import cmt_layer
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.dual_path import DenseBN
from deeplab_panoptic.modeling.layers.mask_predictor import MaskTransformerPredictor


class _AuxiliaryHead(keras.layers.Layer):
  """Class logits and a pixel embedding for one layer's clustering (training only).

  Inputs: centres ``[B, N, C]`` (activated), pixels ``[B, h, w, C_pixel]``
  (non-activated). Outputs: class logits ``[B, N, num_classes + 1]`` and an
  L2-normalised pixel embedding ``[B, h, w, embedding_dim]``.
  """

  def __init__(self, num_classes: int, dim: int, embedding_dim: int, activation: str,
               void_prior_probability: float, **kwargs):
    super().__init__(**kwargs)
    self._act = conv.get_activation(activation)
    self._class_ffn = DenseBN(dim, activation, name="class_ffn")
    void_bias = math.log(num_classes * void_prior_probability /
                         (1.0 - void_prior_probability))
    self._class = keras.layers.Dense(
        num_classes + 1, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        bias_initializer=keras.initializers.Constant([0.0] * num_classes + [void_bias]),
        name="class")
    self._embedding = conv.ConvBN(embedding_dim, 1, name="pixel_embedding")

  def call(self, centres: tf.Tensor, pixels: tf.Tensor, training=None):
    class_logits = self._class(self._class_ffn(centres, training=training))
    embedding = self._embedding(self._act(pixels), training=training)
    return class_logits, tf.math.l2_normalize(embedding, axis=-1)


@gin.configurable
class CMTHead(base.TransformerDecoder):
  """Final and per-layer predictions of CMT-DeepLab (makes the output dict itself).

  Input: pixel-decoder features with ``"stride<output_stride>"`` and ``MEMORY``
  (a CMT state, ``cmt_layer``; a bare memory tensor also works: no auxiliary
  outputs then).
  Output: PRED_CLASS_LOGITS ``[B, N, num_classes + 1]``, PRED_MASK_LOGITS
  ``[B, H/s, W/s, N]``, PRED_PIXEL_EMBEDDING ``[B, H/s, W/s, D]``, AUX_OUTPUTS
  (list of dicts, one per clustering layer, masks at that layer's stride; empty
  outside training) and,
  with location, PRED_REFERENCE_POINTS ``[B, N, M, 2]``.

  Args:
    num_classes: classes without void (auxiliary class heads).
    dim: width of the class and mask embeddings (MaX-S: 256).
    activation: activation function.
    output_stride: stride of the feature the final masks are made at.
    deep_supervision: make the per-layer auxiliary outputs.
    aux_embedding_dim: width of the auxiliary pixel embeddings.
    void_prior_probability: initial void probability of the auxiliary classes.
    predictor: final predictor (default: a gin-configured
      ``MaskTransformerPredictor``).
  """

  predicts_outputs = True

  def __init__(self, num_classes: int = gin.REQUIRED, dim: int = 256,
               activation: str = "gelu", output_stride: int = 4,
               deep_supervision: bool = True, aux_embedding_dim: int = 128,
               void_prior_probability: float = 0.9,
               predictor: Optional[keras.layers.Layer] = None, **kwargs):
    super().__init__(**kwargs)
    self._num_classes = num_classes
    self._dim = dim
    self._activation = activation
    self._key = f"stride{output_stride}"
    self._deep_supervision = deep_supervision
    self._aux_embedding_dim = aux_embedding_dim
    self._void_prior = void_prior_probability
    self._class_ffn = DenseBN(dim, activation, name="class_ffn")
    self._mask_ffn = DenseBN(dim, activation, name="mask_ffn")
    self.predictor = predictor or MaskTransformerPredictor(name="predictor")
    base.check_part("CMTHead", "predictor", self.predictor, base.MaskPredictor)
    self._aux_heads: Optional[List[_AuxiliaryHead]] = None

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """The auxiliary heads: used only by the deep-supervision losses."""
    return list(self._aux_heads or [])

  def call(self, features: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    for key in (MEMORY, self._key):
      if key not in features:
        raise ValueError(f"CMTHead needs the pixel decoder's {key!r} output; it gives "
                         f"{sorted(features)}.")
    state = features[MEMORY]
    memory = cmt_layer.memory_of(state)
    stages = cmt_layer.stages_of(state)
    outputs = dict(self.predictor(
        features[self._key], self._class_ffn(memory, training=training),
        self._mask_ffn(memory, training=training), training=training))
    located = [s for s in stages if cmt_layer.STAGE_REFERENCE_POINTS in s]
    if located:
      outputs[common.PRED_REFERENCE_POINTS] = located[-1][cmt_layer.STAGE_REFERENCE_POINTS]
    clustered = [s for s in stages if cmt_layer.STAGE_LOGITS in s]
    if self._aux_heads is None:
      count = len(clustered) if self._deep_supervision else 0
      self._aux_heads = [_AuxiliaryHead(self._num_classes, self._dim,
                                        self._aux_embedding_dim, self._activation,
                                        self._void_prior, name=f"aux_head{i}")
                         for i in range(count)]
    aux = []
    # Training only: the serving graph (and the SavedModel) holds no auxiliary head.
    for head, stage in zip(self._aux_heads if training else [], clustered):
      class_logits, embedding = head(stage[cmt_layer.STAGE_MEMORY],
                                     stage[cmt_layer.STAGE_PIXELS], training=training)
      prediction = {
          common.PRED_CLASS_LOGITS: class_logits,
          common.PRED_MASK_LOGITS: stage[cmt_layer.STAGE_LOGITS],
          common.PRED_PIXEL_EMBEDDING: embedding,
      }
      # The last layer's points are the final output's: supervised once, there.
      if cmt_layer.STAGE_REFERENCE_POINTS in stage and stage is not located[-1]:
        prediction[common.PRED_REFERENCE_POINTS] = stage[cmt_layer.STAGE_REFERENCE_POINTS]
      aux.append(prediction)
    outputs[common.AUX_OUTPUTS] = aux
    return outputs
