"""Mask2Former's pixel decoder with imported weights, against transformers' outputs.

tests/fixtures/hf_mask2former/pixel_decoder.npz holds a tiny random
``Mask2FormerPixelDecoder``'s state dict (full ``Mask2FormerForUniversalSegmentation``
names), random backbone features and the module's outputs, written by
tools/golden/hf_mask2former_pixel_decoder_golden.py (pixel_decoder.json names the
versions and the configuration).
"""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.modeling import meta_arch  # noqa: F401 (MaskTransformer, named by the gin file)
from deeplab_panoptic.modeling.pixel_decoders.deformable import DeformableEncoder
from deeplab_panoptic.tools.hf_mask2former import pixel_decoder

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf_mask2former")
GIN_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "models",
                        "mask2former_pixel_decoder.gin")


def _fixture():
  with open(os.path.join(FIXTURE, "pixel_decoder.json")) as f:
    metadata = json.load(f)
  with np.load(os.path.join(FIXTURE, "pixel_decoder.npz")) as data:
    arrays = {k: data[k] for k in data.files}
  weights = {k[len("weights/"):]: v for k, v in arrays.items() if k.startswith("weights/")}
  inputs = {k[len("input/"):]: tf.constant(v) for k, v in arrays.items()
            if k.startswith("input/")}
  outputs = {k[len("output/"):]: v for k, v in arrays.items() if k.startswith("output/")}
  return metadata, weights, inputs, outputs


def _decoder(config):
  """The gin file's Mask2Former pixel decoder at the fixture's small size."""
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config_files_and_bindings([GIN_FILE], [
        f"DeformableEncoder.hidden_dim = {config['feature_size']}",
        f"DeformableEncoder.num_layers = {config['encoder_layers']}",
        f"DeformableEncoder.num_heads = {config['num_attention_heads']}",
        f"DeformableEncoder.ffn_dim = {config['encoder_feedforward_dim']}",
        f"DeformableEncoder.mask_features_dim = {config['mask_feature_size']}",
    ])
    try:
      return DeformableEncoder()
    finally:
      gin.clear_config()


def _imported():
  metadata, weights, inputs, outputs = _fixture()
  decoder = _decoder(metadata["config"])
  decoder(inputs)
  used = pixel_decoder.assign(decoder, weights, metadata["prefix"])
  return decoder, weights, inputs, outputs, used


def test_matches_transformers_outputs():
  decoder, weights, inputs, want, used = _imported()
  assert sorted(used) == sorted(weights)            # every array of the module used
  got = decoder(inputs, training=False)
  assert list(got) == ["stride32", "stride16", "stride8", "stride4"]
  for key, value in want.items():
    assert got[key].shape == value.shape, key
    np.testing.assert_allclose(got[key].numpy(), value, atol=1e-4, rtol=0, err_msg=key)
  # The reference is sensitive to what the mapping moves: swapping two levels'
  # projections changes the outputs far beyond the tolerance.
  swapped = dict(weights)
  prefix = "model.pixel_level_module.decoder.input_projections."
  swapped[prefix + "1.1.weight"], swapped[prefix + "2.1.weight"] = (
      weights[prefix + "2.1.weight"], weights[prefix + "1.1.weight"])
  pixel_decoder.assign(decoder, swapped, "model.pixel_level_module.decoder.")
  moved = decoder(inputs, training=False)
  assert np.abs(moved["stride8"].numpy() - want["stride8"]).max() > 1e-2


def test_errors_name_the_array():
  metadata, weights, inputs, _ = _fixture()
  decoder = _decoder(metadata["config"])
  prefix = metadata["prefix"]
  with pytest.raises(ValueError, match="build the DeformableEncoder first"):
    pixel_decoder.assign(decoder, weights, prefix)
  decoder(inputs)
  missing = {k: v for k, v in weights.items() if not k.endswith("level_embed")}
  with pytest.raises(ValueError, match=r"'model\.pixel_level_module\.decoder\.level_embed' "
                     r"is missing"):
    pixel_decoder.assign(decoder, missing, prefix)
  wrong = dict(weights)
  key = prefix + "mask_projection.weight"
  wrong[key] = weights[key][:-1]
  with pytest.raises(ValueError, match=r"mask_projection\.weight' has shape \(15, 32, 1, 1\)"):
    pixel_decoder.assign(decoder, wrong, prefix)
  extra = dict(weights)
  extra[prefix + "encoder.layers.2.fc1.weight"] = weights[prefix + "encoder.layers.1.fc1.weight"]
  with pytest.raises(ValueError, match=r"no variable here .*encoder\.layers\.2\.fc1\.weight"):
    pixel_decoder.assign(decoder, extra, prefix)


def test_refuses_a_decoder_not_configured_as_mask2former():
  decoder = DeformableEncoder(hidden_dim=8, num_layers=1, num_heads=2, num_points=1,
                              ffn_dim=8, num_groups=2)
  decoder({f"stride{s}": tf.zeros([1, 32 // s, 32 // s, 4]) for s in (8, 16, 32)})
  with pytest.raises(ValueError, match="configured as Mask2Former's"):
    pixel_decoder.assign(decoder, {}, "")


@pytest.mark.parametrize("backbone", ["resnet", "swin_l"])
def test_full_size_parameter_count_equals_transformers(backbone):
  """configs/models/mask2former_pixel_decoder.gin at full size has exactly the
  parameters of transformers' Mask2FormerPixelDecoder on the same backbone widths."""
  metadata, _, _, _ = _fixture()
  widths = {"resnet": (256, 512, 1024, 2048), "swin_t_s": (96, 192, 384, 768),
            "swin_b": (128, 256, 512, 1024), "swin_l": (192, 384, 768, 1536)}[backbone]
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config_files_and_bindings([GIN_FILE], [])
    try:
      decoder = DeformableEncoder()
    finally:
      gin.clear_config()
  decoder({f"stride{s}": tf.zeros([1, 32 // s, 32 // s, c])
           for s, c in zip((4, 8, 16, 32), widths)})
  assert sum(int(np.prod(v.shape)) for v in decoder.weights) == \
      metadata["reference_params"][backbone]


def test_level_order_errors_name_the_option():
  with pytest.raises(ValueError, match=r"input_strides \(16, 8, 32\) must be distinct and in "
                     r"fine-to-coarse or coarse-to-fine order"):
    DeformableEncoder(input_strides=(16, 8, 32))
  with pytest.raises(ValueError, match=r"num_extra_levels = 1 needs fine-to-coarse"):
    DeformableEncoder(input_strides=(32, 16, 8), num_extra_levels=1)
  with pytest.raises(ValueError, match=r"fpn_strides \(8,\) must be finer than the finest "
                     r"input stride 8"):
    DeformableEncoder(input_strides=(32, 16, 8), fpn_strides=(8,))
