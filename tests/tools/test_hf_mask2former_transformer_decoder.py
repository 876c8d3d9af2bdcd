"""Mask2Former's transformer decoder with imported weights, against transformers' outputs.

tests/fixtures/hf_mask2former/transformer_decoder.npz holds a tiny random
``Mask2FormerTransformerModule`` + ``class_predictor`` state dict (full
``Mask2FormerForUniversalSegmentation`` names), random multi-scale and mask
features and every prediction the module makes (before the first layer and
after each of its 4 layers), written by
tools/golden/hf_mask2former_transformer_decoder_golden.py (transformer_decoder.json
names the versions, the configuration, and how many attention rows of each layer
were empty: the fallback is exercised).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.modeling.transformer_decoders.mask2former import Mask2FormerDecoder
from deeplab_panoptic.tools.hf_mask2former import transformer_decoder

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf_mask2former")
LEVEL_STRIDES = (32, 16, 8)


def _fixture():
  with open(os.path.join(FIXTURE, "transformer_decoder.json")) as f:
    metadata = json.load(f)
  with np.load(os.path.join(FIXTURE, "transformer_decoder.npz")) as data:
    arrays = {k: data[k] for k in data.files}
  weights = {k[len("weights/"):]: v for k, v in arrays.items() if k.startswith("weights/")}
  features = {f"stride{s}": tf.constant(arrays[f"level{i}"])
              for i, s in enumerate(LEVEL_STRIDES)}
  features["stride4"] = tf.constant(arrays["mask_features"])
  return metadata, weights, features, arrays["class_logits"], arrays["mask_logits"]


def _decoder(config, **overrides):
  kwargs = dict(num_classes=config["num_labels"], num_queries=config["num_queries"],
                hidden_dim=config["hidden_dim"], num_heads=config["num_attention_heads"],
                ffn_dim=config["dim_feedforward"], num_layers=config["decoder_layers"] - 1,
                level_strides=LEVEL_STRIDES, mask_stride=4,
                mask_dim=config["mask_feature_size"],
                input_projection=config["feature_size"] != config["hidden_dim"])
  kwargs.update(overrides)
  return Mask2FormerDecoder(**kwargs)


def _imported(**overrides):
  metadata, weights, features, class_logits, mask_logits = _fixture()
  decoder = _decoder(metadata["config"], **overrides)
  decoder(features)
  used = transformer_decoder.assign(decoder, weights, metadata["prefix"],
                                    metadata["class_prefix"])
  return decoder, used, weights, features, class_logits, mask_logits


def test_fixture_exercises_the_empty_mask_fallback():
  metadata, *_ = _fixture()
  assert sum(layer["empty_rows"] for layer in metadata["attention"]) > 0
  assert all(0.0 < layer["blocked_fraction"] < 1.0 for layer in metadata["attention"])


def test_every_prediction_matches_transformers():
  decoder, used, weights, features, class_logits, mask_logits = _imported()
  assert sorted(used) == sorted(weights)
  outputs = decoder(features)
  predictions = outputs[common.AUX_OUTPUTS] + [outputs]
  assert len(predictions) == class_logits.shape[0] == 5
  for index, prediction in enumerate(predictions):
    np.testing.assert_allclose(prediction[common.PRED_CLASS_LOGITS].numpy(),
                               class_logits[index], atol=1e-4, rtol=0,
                               err_msg=f"class logits of prediction {index}")
    np.testing.assert_allclose(prediction[common.PRED_MASK_LOGITS].numpy(),
                               mask_logits[index], atol=1e-4, rtol=0,
                               err_msg=f"mask logits of prediction {index}")


def test_missing_and_extra_arrays_are_named():
  metadata, weights, features, _, _ = _fixture()
  decoder = _decoder(metadata["config"])
  decoder(features)
  prefix = metadata["prefix"]
  key = f"{prefix}decoder.layers.2.cross_attn.in_proj_weight"
  with pytest.raises(ValueError, match=r"'model\.transformer_module\.decoder\.layers\.2\."
                                       r"cross_attn\.in_proj_weight' is missing"):
    transformer_decoder.assign(decoder, {k: v for k, v in weights.items() if k != key},
                               prefix)
  shorter = _decoder(metadata["config"], num_layers=metadata["config"]["decoder_layers"] - 2)
  shorter(features)
  with pytest.raises(ValueError, match=r"have no variable here .*decoder\.layers\.3\."):
    transformer_decoder.assign(shorter, weights, prefix)
  bad = dict(weights, **{f"{prefix}level_embed.weight": np.zeros([2, 16], np.float32)})
  with pytest.raises(ValueError, match=r"'model\.transformer_module\.level_embed\.weight' has "
                                       r"shape \(2, 16\)"):
    transformer_decoder.assign(decoder, bad, prefix)
