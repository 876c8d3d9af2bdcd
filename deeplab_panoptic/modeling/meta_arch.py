"""One mask-transformer meta-architecture assembled from injected parts."""

from typing import Dict, List, Optional

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling.heads import MaskTransformerPredictor


@gin.configurable
class MaskTransformer(keras.Model):
  """Pixel encoder -> pixel decoder -> transformer decoder -> heads.

  Every model family of the library is this class with different parts, chosen in
  gin. Parts:
    pixel_encoder: images -> ``{"stride<s>": features}``.
    pixel_decoder: encoder endpoints -> ``{"stride<s>": features}``.
    transformer_decoder: decoder features -> (class embedding, mask embedding,
      list of auxiliary predictions).
    predictor: (finest decoder feature, class embedding, mask embedding) ->
      class / mask logits and pixel embedding.
    semantic_head: optional, training-only; encoder endpoints -> semantic logits.

  Input: images ``[batch, height, width, 3]`` normalised to [-1, 1].
  Output dict (common.py): PRED_CLASS_LOGITS ``[batch, N, num_classes + 1]``,
  PRED_MASK_LOGITS ``[batch, height / s, width / s, N]``, PRED_PIXEL_EMBEDDING
  ``[batch, height / s, width / s, D]`` (s = ``output_stride``), AUX_OUTPUTS, and
  PRED_SEMANTIC_LOGITS when a semantic head is configured and ``training`` or
  ``semantic_at_inference`` is set.

  Args:
    pixel_encoder, pixel_decoder, transformer_decoder, predictor, semantic_head: parts.
    output_stride: stride of the pixel-decoder feature the final masks are made at.
    semantic_at_inference: also run the semantic head outside training.
  """

  def __init__(self, pixel_encoder: keras.layers.Layer = gin.REQUIRED,
               pixel_decoder: keras.layers.Layer = gin.REQUIRED,
               transformer_decoder: keras.layers.Layer = gin.REQUIRED,
               predictor: Optional[keras.layers.Layer] = None,
               semantic_head: Optional[keras.layers.Layer] = None,
               output_stride: int = 4, semantic_at_inference: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.pixel_encoder = pixel_encoder
    self.pixel_decoder = pixel_decoder
    self.transformer_decoder = transformer_decoder
    # A decoder with `predicts_outputs` (Panoptic SegFormer) returns the output dict
    # itself, so no predictor is built for it.
    self._decoder_predicts = bool(getattr(transformer_decoder, "predicts_outputs", False))
    if predictor is None and not self._decoder_predicts:
      predictor = MaskTransformerPredictor(name="predictor")
    self.predictor = predictor
    self.semantic_head = semantic_head
    self.output_stride = output_stride
    self.semantic_at_inference = semantic_at_inference

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """Parts used only by the training losses (left out of the paper's params)."""
    layers = [self.semantic_head] if self.semantic_head is not None else []
    return layers + list(getattr(self.transformer_decoder, "training_only_layers", []))

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    endpoints = self.pixel_encoder(images, training=training)
    features = self.pixel_decoder(endpoints, training=training)
    key = f"stride{self.output_stride}"
    if key not in features:
      raise ValueError(f"MaskTransformer.output_stride={self.output_stride} but the pixel "
                       f"decoder gives {sorted(features)}.")
    if self._decoder_predicts:
      outputs = dict(self.transformer_decoder(features, training=training))
    else:
      class_embedding, mask_embedding, aux = self.transformer_decoder(features,
                                                                      training=training)
      outputs = dict(self.predictor(features[key], class_embedding, mask_embedding,
                                    training=training))
      outputs[common.AUX_OUTPUTS] = aux
    if self.semantic_head is not None and (training or self.semantic_at_inference):
      outputs[common.PRED_SEMANTIC_LOGITS] = self.semantic_head(endpoints, training=training)
    return outputs
