"""MaskTransformer.recompute on every family's path: each listed part really runs
under tf.recompute_grad (its forward pass runs again while the gradient is built),
and the gradients are those without it.

The count is of the part's own ``call``: once per forward pass without
recomputation, twice (forward, then again inside ``tape.gradient``) with it. A
path that bypassed the recomputation (as the decoders that predict their outputs
themselves once did) counts 1 and fails.
"""

import functools

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling import heads
from deeplab_panoptic.modeling.layers import cmt_layer
from deeplab_panoptic.modeling.layers.dual_path import DualPathConfig
from deeplab_panoptic.modeling.layers.mask_predictor import MaskTransformerPredictor
from deeplab_panoptic.modeling.meta_arch import RECOMPUTABLE_PARTS, MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.cmt_deeplab import CMTPixelDecoder
from deeplab_panoptic.modeling.pixel_decoders.deformable import DeformableEncoder
from deeplab_panoptic.modeling.pixel_decoders.kmax import KMaXPixelDecoder
from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import MaXPixelDecoder
from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import AxialResNet
from deeplab_panoptic.modeling.pixel_encoders.pvtv2 import PVTv2Encoder
from deeplab_panoptic.modeling.pixel_encoders.resnet import ResNetEncoder
from deeplab_panoptic.modeling.transformer_decoders.cmt_deeplab import CMTHead
from deeplab_panoptic.modeling.transformer_decoders.kmax import KMaXTransformerDecoder
from deeplab_panoptic.modeling.transformer_decoders.max_deeplab import MaXMemoryHead
from deeplab_panoptic.modeling.transformer_decoders.panoptic_segformer import (
    PanopticSegFormerDecoder)

C = 3   # classes
N = 4   # mask slots


def _predictor():
  return MaskTransformerPredictor(num_classes=C, embedding_dim=8, pixel_head_dim=8,
                                  name="predictor")


def _semantic_head(input_stride):
  return heads.SemanticHead(num_classes=C, input_stride=input_stride, aspp_dim=8,
                            head_dim=8, low_level_dims=(4, 4), atrous_rates=(1,),
                            dropout=0.0)


def _kmax(recompute):
  return MaskTransformer(
      pixel_encoder=ResNetEncoder(model_id=18, depth_multiplier=0.25),
      pixel_decoder=KMaXPixelDecoder(num_blocks=(1, 1, 1, 1), filters=(8, 8, 8, 8),
                                     expansion=1),
      transformer_decoder=KMaXTransformerDecoder(
          num_centers=N, num_blocks=(1, 0, 0), center_dim=8, bottleneck_dim=8, num_heads=2,
          key_dim=8, ffn_dim=8,
          predictor_factory=functools.partial(MaskTransformerPredictor, num_classes=C,
                                              embedding_dim=8, pixel_head_dim=8)),
      predictor=_predictor(), semantic_head=_semantic_head(32), recompute=recompute), 64


def _max(recompute):
  dual_path = DualPathConfig(num_memory=N, memory_dim=8, bottleneck_dim=8, key_dim=4,
                             value_dim=8, num_heads=2, ffn_dim=8)
  return MaskTransformer(
      pixel_encoder=AxialResNet(num_blocks=(1, 1, 1, 1), filters=(4, 4, 4, 4),
                                stem_filters=(4, 4), expansion=2, num_heads=2,
                                dual_path=dual_path),
      pixel_decoder=MaXPixelDecoder(filters=(4, 4, 4), expansion=2, num_heads=2,
                                    dual_path=dual_path),
      transformer_decoder=MaXMemoryHead(dim=8), predictor=_predictor(),
      semantic_head=_semantic_head(16), recompute=recompute), 33


def _cmt(recompute):
  config = cmt_layer.CMTLayerConfig(num_memory=N, memory_dim=8, bottleneck_dim=8, key_dim=4,
                                    value_dim=8, num_heads=2, ffn_dim=8,
                                    num_reference_points=2, reference_mlp_dim=8)
  return MaskTransformer(
      pixel_encoder=AxialResNet(num_blocks=(1, 1, 1, 1), filters=(4, 4, 4, 8),
                                stem_filters=(4, 4), expansion=2, num_heads=2,
                                axial_beyond_stride=0, transformer_beyond_stride=0,
                                learn_memory=True, dual_path=config, activation="gelu"),
      pixel_decoder=CMTPixelDecoder(strides=(16, 4), num_blocks=(1, 1), filters=(8, 4),
                                    block_kinds=("bottleneck", "bottleneck"),
                                    transformer=(True, False), expansion=2, num_heads=2,
                                    dual_path=config, activation="gelu"),
      transformer_decoder=CMTHead(num_classes=C, dim=8, aux_embedding_dim=8,
                                  predictor=_predictor()),
      semantic_head=_semantic_head(16), recompute=recompute), 33


def _panoptic_segformer(recompute):
  return MaskTransformer(
      pixel_encoder=PVTv2Encoder(variant="b0", embed_dims=(8, 8, 8, 8), depths=(1, 1, 1, 1),
                                 num_heads=(1, 1, 1, 1), drop_path_rate=0.0),
      pixel_decoder=DeformableEncoder(hidden_dim=8, num_layers=1, num_heads=2, num_points=1,
                                      ffn_dim=8, dropout=0.0, num_groups=2),
      transformer_decoder=PanopticSegFormerDecoder(
          num_classes=C, num_queries=N, hidden_dim=8, num_heads=2, num_points=1,
          num_location_layers=1, num_mask_layers=2, ffn_dim=8, mask_ffn_dim=8,
          dropout=0.0),
      semantic_head=_semantic_head(32), output_stride=8, recompute=recompute), 64


FAMILIES = {"kmax": _kmax, "max": _max, "cmt": _cmt,
            "panoptic_segformer": _panoptic_segformer}


def _parts(model):
  parts = {"pixel_encoder": model.pixel_encoder, "pixel_decoder": model.pixel_decoder,
           "transformer_decoder": model.transformer_decoder,
           "predictor": model.predictor, "semantic_head": model.semantic_head}
  return {name: part for name, part in parts.items() if part is not None}


def _loss(outputs):
  """Every output the gradient can reach (auxiliary ones included)."""
  tensors = [t for t in tf.nest.flatten(outputs) if t.dtype.is_floating]
  return tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])


def _calls_and_gradients(model, size, monkeypatch):
  """Calls of each part's ``call`` during one training forward + gradient."""
  calls = {name: 0 for name in _parts(model)}
  by_id = {id(part): name for name, part in _parts(model).items()}
  for cls in {type(part) for part in _parts(model).values()}:
    original = cls.call

    def counting(self, *args, __original=original, **kwargs):
      if id(self) in by_id:
        calls[by_id[id(self)]] += 1
      return __original(self, *args, **kwargs)
    monkeypatch.setattr(cls, "call", counting)
  images = tf.random.stateless_uniform([1, size, size, 3], [1, 2], -1, 1)
  with tf.GradientTape() as tape:
    loss = _loss(model(images, training=True))
  gradients = tape.gradient(loss, model.trainable_variables)
  monkeypatch.undo()
  return calls, float(loss), gradients


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_part_is_recomputed_on_every_family_path(family, monkeypatch):
  keras.utils.set_random_seed(1)
  plain, size = FAMILIES[family](())
  plain(tf.zeros([1, size, size, 3]), training=True)  # builds every part
  names = tuple(_parts(plain))
  recomputed, _ = FAMILIES[family](names)
  recomputed(tf.zeros([1, size, size, 3]), training=True)
  recomputed.set_weights(plain.get_weights())

  calls, loss, grads = _calls_and_gradients(plain, size, monkeypatch)
  assert calls == {name: 1 for name in names}
  calls, loss_b, grads_b = _calls_and_gradients(recomputed, size, monkeypatch)
  assert calls == {name: 2 for name in names}, f"{family}: a part was not recomputed"
  np.testing.assert_allclose(loss_b, loss, rtol=1e-5)
  for variable, a, b in zip(plain.trainable_variables, grads, grads_b):
    assert (a is None) == (b is None), variable.name
    if a is not None:
      # Gathers (axial attention's position tables) give IndexedSlices.
      np.testing.assert_allclose(tf.convert_to_tensor(b).numpy(),
                                 tf.convert_to_tensor(a).numpy(), rtol=1e-4, atol=1e-5,
                                 err_msg=variable.name)


def test_the_listed_parts_are_the_recomputable_ones():
  model, _ = _kmax(())
  assert set(_parts(model)) == set(RECOMPUTABLE_PARTS)


@pytest.mark.parametrize("builder, part, message", [
    (_panoptic_segformer, "predictor", "predicts its outputs itself"),
    (_cmt, "predictor", "predicts its outputs itself"),
])
def test_a_part_the_model_lacks_is_rejected(builder, part, message):
  with pytest.raises(ValueError, match=message):
    builder((part,))


def test_recomputing_an_absent_semantic_head_is_rejected():
  with pytest.raises(ValueError, match="no semantic_head"):
    MaskTransformer(pixel_encoder=PVTv2Encoder(variant="b0"),
                    pixel_decoder=DeformableEncoder(), transformer_decoder=MaXMemoryHead(),
                    predictor=_predictor(), recompute=("semantic_head",))


class _NotAnEncoder(keras.layers.Layer):
  pass


@pytest.mark.parametrize("slot", ["pixel_encoder", "pixel_decoder", "transformer_decoder",
                                  "predictor", "semantic_head"])
def test_parts_are_type_checked(slot):
  model, _ = _kmax(())
  parts = {"pixel_encoder": model.pixel_encoder, "pixel_decoder": model.pixel_decoder,
           "transformer_decoder": model.transformer_decoder}
  parts[slot] = _NotAnEncoder()
  contract = {"pixel_encoder": base.PixelEncoder, "pixel_decoder": base.PixelDecoder,
              "transformer_decoder": base.TransformerDecoder,
              "predictor": base.MaskPredictor, "semantic_head": base.PixelHead}[slot]
  with pytest.raises(TypeError, match=f"MaskTransformer.{slot} must be a .*"
                                      f"{contract.__name__}.*got _NotAnEncoder"):
    MaskTransformer(**parts)


def test_a_predictor_beside_a_predicting_decoder_is_rejected():
  model, _ = _panoptic_segformer(())
  with pytest.raises(ValueError, match="unset MaskTransformer.predictor"):
    MaskTransformer(pixel_encoder=model.pixel_encoder, pixel_decoder=model.pixel_decoder,
                    transformer_decoder=model.transformer_decoder, predictor=_predictor())
