"""The part contracts (modeling/base.py): every part subclasses one, and the
declarations are checked against what the parts return."""

import inspect
import sys

import gin
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import registry
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.dual_path import DualPathConfig
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import MaXPixelDecoder
from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import AxialResNet

FAMILIES = ("pixel_encoders", "pixel_decoders", "transformer_decoders", "heads")


def _family_layer_classes():
  """Every Keras layer class defined in a part family's modules, public ones only."""
  found = []
  for name in registry.MODULES:
    parts = name.split(".")
    if len(parts) < 3 or parts[1] != "modeling":
      continue
    if not any(parts[2] == f or parts[2].startswith(f + "_") for f in FAMILIES):
      continue
    for _, cls in inspect.getmembers(sys.modules[name], inspect.isclass):
      if (cls.__module__ == name and issubclass(cls, keras.layers.Layer)
          and not cls.__name__.startswith("_")):
        found.append(cls)
  return found


def _is_gin_configurable(cls) -> bool:
  return bool(gin.config._REGISTRY.matching_selectors(  # pylint: disable=protected-access
      f"{cls.__module__}.{cls.__name__}"))


def test_every_configurable_part_subclasses_a_contract():
  classes = [c for c in _family_layer_classes() if _is_gin_configurable(c)]
  assert len(classes) >= 15
  loose = [c.__name__ for c in classes if not issubclass(c, base.Part)]
  assert not loose, f"gin-configurable parts without a contract: {loose}"


def test_predicts_outputs_is_declared_by_the_class():
  from deeplab_panoptic.modeling.transformer_decoders import cmt_deeplab, kmax, max_deeplab  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.transformer_decoders import panoptic_segformer  # pylint: disable=g-import-not-at-top
  assert base.TransformerDecoder.predicts_outputs is False
  assert kmax.KMaXTransformerDecoder.predicts_outputs is False
  assert max_deeplab.MaXMemoryHead.predicts_outputs is False
  assert cmt_deeplab.CMTHead.predicts_outputs is True
  assert panoptic_segformer.PanopticSegFormerDecoder.predicts_outputs is True


def test_stride_keys():
  assert base.stride_key(8) == "stride8"
  assert base.stride_of("stride16") == 16
  assert base.stride_of("memory") is None and base.stride_of("stride") is None


def _max_parts():
  dual_path = DualPathConfig(num_memory=2, memory_dim=8, bottleneck_dim=8, key_dim=4,
                             value_dim=8, num_heads=2, ffn_dim=8)
  encoder = AxialResNet(num_blocks=(1, 1, 1, 1), filters=(4, 4, 4, 4), stem_filters=(4, 6),
                        expansion=2, num_heads=2, dual_path=dual_path)
  decoder = MaXPixelDecoder(filters=(4, 4, 2), expansion=2, num_heads=2, dual_path=dual_path)
  return encoder, decoder


def test_declared_channels_match_the_features():
  """AxialResNet and MaXPixelDecoder compute their declaration; check it by running."""
  encoder, decoder = _max_parts()
  assert encoder.output_channels == {"stride2": 6, "stride4": 8, "stride8": 8, "stride16": 8}
  assert encoder.output_strides == (2, 4, 8, 16)
  assert decoder.output_channels == {"stride16": 8, "stride8": 8, "stride4": 4}
  endpoints = encoder(tf.zeros([1, 17, 17, 3]))
  base.check_features("test", encoder, endpoints)
  base.check_features("test", decoder, decoder(endpoints))


class _Liar(base.PixelEncoder):
  """Declares 5 channels at stride 2, returns 3."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.output_channels = {"stride2": 5}
    self._conv = keras.layers.Conv2D(3, 1, strides=2)

  def call(self, images, training=None):
    return {"stride2": self._conv(images)}


def test_a_wrong_declaration_is_an_error_at_the_first_call():
  _, decoder = _max_parts()
  with pytest.raises(ValueError, match="_Liar declares 'stride2' with 5 channels, returns 3"):
    base.check_features("MaskTransformer", _Liar(), _Liar()(tf.zeros([1, 4, 4, 3])))
  with pytest.raises(ValueError, match="declares output 'stride8' but returns"):
    base.check_features("MaskTransformer", decoder, {"stride16": tf.zeros([1, 1, 1, 8])})
  with pytest.raises(ValueError, match="must return a dict"):
    base.check_features("MaskTransformer", decoder, tf.zeros([1]))


def test_a_part_in_the_wrong_slot_is_a_type_error():
  encoder, decoder = _max_parts()
  with pytest.raises(TypeError, match="MaskTransformer.pixel_decoder must be a "
                                      "deeplab_panoptic.modeling.base.PixelDecoder"):
    MaskTransformer(pixel_encoder=encoder, pixel_decoder=encoder,
                    transformer_decoder=decoder)


def test_training_only_layers_default_to_none():
  assert base.Part().training_only_layers == []
  assert base.SegmentationModel().training_only_layers == []
