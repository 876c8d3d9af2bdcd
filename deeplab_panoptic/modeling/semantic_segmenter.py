"""The per-pixel meta-architecture: one class label per pixel (DeepLabV3+ and kin)."""

from typing import Dict, List, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling import recompute as recompute_lib

RECOMPUTABLE_PARTS = ("pixel_encoder", "pixel_decoder", "head")


@gin.configurable
class SemanticSegmenter(base.SegmentationModel):
  """Pixel encoder -> pixel decoder -> per-pixel head.

  The per-pixel sibling of ``MaskTransformer``: the same call, the same runtime
  (training, evaluation, export, checkpoints), parts chosen in gin. DeepLabV3+
  (Chen et al., arXiv 1802.02611, Fig. 2) is ``DilatedResNetEncoder`` ->
  ``ASPPPixelDecoder`` -> ``DeepLabV3PlusHead``.

  The head reads the encoder endpoints and the decoder features in one
  ``Features`` dict, the decoder's entry winning where both have a key: at every
  stride, the last feature the network made there (so DeepLabV3+'s head finds the
  ASPP output at the encoder's output stride and the encoder's stride-4 feature).
  The optional auxiliary head reads the encoder endpoints, runs only in
  training and is left out of ``params`` and of the SavedModel.

  Input: images ``[batch, height, width, 3]`` normalised to [-1, 1].
  Output dict: ``common.PRED_SEMANTIC_LOGITS`` ``[batch, height / s, width / s,
  num_classes]`` (s: the head's output stride); in training with an auxiliary
  head also ``common.PRED_AUX_SEMANTIC_LOGITS`` ``[batch, h_a, w_a, num_classes]``.

  Args:
    pixel_encoder: a ``base.PixelEncoder`` (images -> ``Features``).
    pixel_decoder: a ``base.PixelDecoder`` (encoder ``Features`` -> ``Features``).
    head: a ``base.PixelHead`` (``Features`` -> logits).
    auxiliary_head: optional training-only ``base.PixelHead`` on the encoder
      endpoints (mmsegmentation's auxiliary FCN head).
    recompute: parts ("pixel_encoder", "pixel_decoder", "head") whose
      activations are recomputed in the backward pass instead of kept
      (tf.recompute_grad; training only; same gradients and batch-norm updates;
      see ``MaskTransformer``).
  """

  def __init__(self, pixel_encoder: base.PixelEncoder = gin.REQUIRED,
               pixel_decoder: base.PixelDecoder = gin.REQUIRED,
               head: base.PixelHead = gin.REQUIRED,
               auxiliary_head: Optional[base.PixelHead] = None,
               recompute: Sequence[str] = (), **kwargs):
    super().__init__(**kwargs)
    owner = type(self).__name__
    base.check_part(owner, "pixel_encoder", pixel_encoder, base.PixelEncoder)
    base.check_part(owner, "pixel_decoder", pixel_decoder, base.PixelDecoder)
    base.check_part(owner, "head", head, base.PixelHead)
    base.check_part(owner, "auxiliary_head", auxiliary_head, base.PixelHead, optional=True)
    unknown = sorted(set(recompute) - set(RECOMPUTABLE_PARTS))
    if unknown:
      raise ValueError(f"{owner}.recompute names {unknown}; choose from "
                       f"{list(RECOMPUTABLE_PARTS)}.")
    self.recompute = tuple(recompute)
    self.pixel_encoder = pixel_encoder
    self.pixel_decoder = pixel_decoder
    self.head = head
    self.auxiliary_head = auxiliary_head

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """The auxiliary head (if any) and the parts' own training-only layers."""
    layers = [self.auxiliary_head] if self.auxiliary_head is not None else []
    for part in (self.pixel_encoder, self.pixel_decoder, self.head):
      layers += list(part.training_only_layers)
    return layers

  def _run_part(self, name: str, inputs, training):
    """Calls part ``name``, under tf.recompute_grad when configured and training."""
    part = getattr(self, name)
    if training and name in self.recompute:
      return recompute_lib.recompute_call(part, (inputs,), training)
    return part(inputs, training=training)

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    owner = type(self).__name__
    endpoints = self._run_part("pixel_encoder", images, training)
    base.check_features(owner, self.pixel_encoder, endpoints)
    features = self._run_part("pixel_decoder", endpoints, training)
    base.check_features(owner, self.pixel_decoder, features)
    logits = self._run_part("head", {**endpoints, **features}, training)
    outputs = {common.PRED_SEMANTIC_LOGITS: logits}
    if training and self.auxiliary_head is not None:
      outputs[common.PRED_AUX_SEMANTIC_LOGITS] = self.auxiliary_head(endpoints,
                                                                     training=training)
    return outputs
