"""One mask-transformer meta-architecture assembled from injected parts."""

from typing import Dict, List, Optional, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling import recompute as recompute_lib
from deeplab_panoptic.modeling.layers.mask_predictor import MaskTransformerPredictor


@gin.configurable
class MaskTransformer(base.SegmentationModel):
  """Pixel encoder -> pixel decoder -> transformer decoder -> heads.

  Every mask-transformer family of the library is this class with different
  parts, chosen in gin; each part subclasses its contract in ``modeling/base.py``,
  checked here:
    pixel_encoder (``base.PixelEncoder``): images -> ``{"stride<s>": features}``.
    pixel_decoder (``base.PixelDecoder``): encoder endpoints -> ``{"stride<s>": features}``.
    transformer_decoder (``base.TransformerDecoder``): decoder features ->
      (class embedding, mask embedding, list of auxiliary predictions), or, when
      its class declares ``predicts_outputs`` (CMT-DeepLab, Panoptic SegFormer),
      the complete output dict; then no predictor is built.
    predictor (``base.MaskPredictor``): (finest decoder feature, class embedding,
      mask embedding) -> class / mask logits and pixel embedding.
    semantic_head (``base.PixelHead``): optional, training-only; encoder endpoints
      (or, with ``semantic_head_input="decoder"``, the pixel decoder's features)
      -> semantic logits.

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
    semantic_head_input: what the semantic head reads: "encoder" (the encoder
      endpoints; MaX-S, kMaX) or "decoder" (the pixel decoder's features;
      MaX-DeepLab-L reads its first extra-decoder stride-4 output).
    recompute: names of parts (``RECOMPUTABLE_PARTS``: "pixel_encoder",
      "pixel_decoder", "transformer_decoder", "predictor", "semantic_head")
      whose activations are not kept for the backward pass but recomputed there
      (tf.recompute_grad), trading about one more forward pass of those parts
      for memory at large crops. Training only; the gradients are those without
      it, and batch norm moving statistics are updated once (the recomputation
      does not update them again). Drop path / dropout under a recomputed part
      need stateful generators (``ExperimentConfig.seed``), whose draws are
      replayed. A part the model does not have (no semantic head; no predictor
      beside a decoder that predicts) is an error.

  Raises:
    TypeError: a part does not subclass its contract.
    ValueError: a bad ``semantic_head_input`` or ``recompute`` entry, or a
      predictor beside a decoder that predicts its outputs itself.
  """

  def __init__(self, pixel_encoder: base.PixelEncoder = gin.REQUIRED,
               pixel_decoder: base.PixelDecoder = gin.REQUIRED,
               transformer_decoder: base.TransformerDecoder = gin.REQUIRED,
               predictor: Optional[base.MaskPredictor] = None,
               semantic_head: Optional[base.PixelHead] = None,
               output_stride: int = 4, semantic_at_inference: bool = False,
               recompute: Sequence[str] = (), semantic_head_input: str = "encoder",
               **kwargs):
    super().__init__(**kwargs)
    if semantic_head_input not in ("encoder", "decoder"):
      raise ValueError("MaskTransformer.semantic_head_input must be 'encoder' or "
                       f"'decoder', got {semantic_head_input!r}.")
    self.semantic_head_input = semantic_head_input
    unknown = set(recompute) - set(RECOMPUTABLE_PARTS)
    if unknown:
      raise ValueError(f"MaskTransformer.recompute names {sorted(unknown)}; choose from "
                       f"{list(RECOMPUTABLE_PARTS)}.")
    for slot, part, contract, optional in (
        ("pixel_encoder", pixel_encoder, base.PixelEncoder, False),
        ("pixel_decoder", pixel_decoder, base.PixelDecoder, False),
        ("transformer_decoder", transformer_decoder, base.TransformerDecoder, False),
        ("predictor", predictor, base.MaskPredictor, True),
        ("semantic_head", semantic_head, base.PixelHead, True)):
      base.check_part("MaskTransformer", slot, part, contract, optional)
    self._decoder_predicts = transformer_decoder.predicts_outputs
    if self._decoder_predicts and predictor is not None:
      raise ValueError(f"MaskTransformer: {type(transformer_decoder).__name__} predicts its "
                       "outputs itself (predicts_outputs); unset MaskTransformer.predictor.")
    if predictor is None and not self._decoder_predicts:
      predictor = MaskTransformerPredictor(name="predictor")
    self.pixel_encoder = pixel_encoder
    self.pixel_decoder = pixel_decoder
    self.transformer_decoder = transformer_decoder
    self.predictor = predictor
    self.semantic_head = semantic_head
    self.output_stride = output_stride
    self.semantic_at_inference = semantic_at_inference
    self.recompute = self._check_recompute(recompute)

  def _check_recompute(self, recompute: Sequence[str]) -> Tuple[str, ...]:
    """``recompute`` as a tuple, once every name is a part this model has."""
    absent = [name for name in recompute if self._part(name) is None]
    if absent:
      why = {"predictor": f"{type(self.transformer_decoder).__name__} predicts its outputs "
                          "itself (recompute 'transformer_decoder' instead)",
             "semantic_head": "no semantic_head is configured"}
      raise ValueError(f"MaskTransformer.recompute names {absent}, which this model does "
                       f"not have: {'; '.join(why[name] for name in absent)}.")
    return tuple(recompute)

  def _part(self, name: str) -> Optional[base.Part]:
    return {"pixel_encoder": self.pixel_encoder, "pixel_decoder": self.pixel_decoder,
            "transformer_decoder": self.transformer_decoder, "predictor": self.predictor,
            "semantic_head": self.semantic_head}[name]

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """Parts used only by the training losses (left out of the paper's params):
    the semantic head and every part's own ``training_only_layers``."""
    layers = [self.semantic_head] if self.semantic_head is not None else []
    for part in (self.pixel_encoder, self.pixel_decoder, self.transformer_decoder,
                 self.predictor):
      if part is not None:
        layers += list(part.training_only_layers)
    return layers

  def _run_part(self, name: str, *inputs, training=None):
    """Calls part ``name`` on ``inputs``, under tf.recompute_grad when configured
    and training."""
    part = self._part(name)
    if not (training and name in self.recompute):
      return part(*inputs, training=training)
    return recompute_lib.recompute_call(part, inputs, training)

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    endpoints = self._run_part("pixel_encoder", images, training=training)
    base.check_features("MaskTransformer", self.pixel_encoder, endpoints)
    features = self._run_part("pixel_decoder", endpoints, training=training)
    base.check_features("MaskTransformer", self.pixel_decoder, features)
    key = base.stride_key(self.output_stride)
    if key not in features:
      raise ValueError(f"MaskTransformer.output_stride={self.output_stride} but the pixel "
                       f"decoder gives {sorted(features)}.")
    decoded = self._run_part("transformer_decoder", features, training=training)
    if self._decoder_predicts:
      outputs = dict(decoded)
    else:
      class_embedding, mask_embedding, aux = decoded
      outputs = dict(self._run_part("predictor", features[key], class_embedding,
                                    mask_embedding, training=training))
      outputs[common.AUX_OUTPUTS] = aux
    if self.semantic_head is not None and (training or self.semantic_at_inference):
      semantic_input = features if self.semantic_head_input == "decoder" else endpoints
      outputs[common.PRED_SEMANTIC_LOGITS] = self._run_part("semantic_head", semantic_input,
                                                            training=training)
    return outputs


RECOMPUTABLE_PARTS = ("pixel_encoder", "pixel_decoder", "transformer_decoder", "predictor",
                      "semantic_head")
