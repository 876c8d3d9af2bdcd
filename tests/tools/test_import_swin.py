"""Swin import: safetensors -> SwinEncoder, against transformers' and timm's outputs.

tests/fixtures/swin holds a tiny random ``SwinBackbone`` saved by transformers
(``save_pretrained``), an input and its four ``feature_maps``; tests/fixtures/swin/timm
a tiny random timm ``SwinTransformer``, an input and its stage outputs. Both are
written by tools/golden/swin_golden.py (metadata.json names the versions).
"""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.kmax import KMaXPixelDecoder
from deeplab_panoptic.modeling.pixel_encoders.swin import SwinEncoder
from deeplab_panoptic.modeling.transformer_decoders.kmax import KMaXTransformerDecoder
from deeplab_panoptic.tools import import_swin
from deeplab_panoptic.tools.import_deeplab2 import write_imported_checkpoint
from deeplab_panoptic.training import init_checkpoint

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "swin")
WEIGHTS = os.path.join(FIXTURE, "model.safetensors")
STRIDES = (4, 8, 16, 32)


def _metadata():
  with open(os.path.join(FIXTURE, "metadata.json")) as f:
    return json.load(f)


def _golden():
  with np.load(os.path.join(FIXTURE, "golden.npz")) as data:
    return {k: data[k] for k in data.files}


def _encoder():
  config = _metadata()["config"]
  encoder = SwinEncoder(embed_dim=config["embed_dim"], depths=config["depths"],
                        num_heads=config["num_heads"], window_size=config["window_size"],
                        mlp_ratio=config["mlp_ratio"], drop_path_rate=0.0,
                        layer_norm_epsilon=config["layer_norm_eps"])
  encoder(tf.zeros([1, 32, 32, 3]))
  return encoder


def _state():
  return import_swin.read_safetensors(WEIGHTS, "")


def _assert_matches_golden(encoder):
  golden = _golden()
  outputs = encoder(tf.constant(golden["image"]), training=False)
  for i, s in enumerate(STRIDES):
    want = golden[f"stage{i + 1}"]
    got = outputs[f"stride{s}"].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"stride{s}")


def test_fixture_is_small_and_names_its_reference():
  size = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(FIXTURE)
             for n in names)
  assert size < 1_000_000
  metadata = _metadata()
  assert metadata["reference_class"] == "SwinBackbone"
  assert metadata["transformers_version"]


def test_imported_encoder_equals_transformers_swin_backbone():
  encoder = _encoder()
  report = import_swin.load_swin_state(encoder, _state())
  assert report == {"assigned": len(encoder.weights), "stage_norms_kept": 0,
                    "classifier_arrays": 2}   # transformers 5's unused swin.layernorm
  _assert_matches_golden(encoder)


def _model():
  gin.clear_config()
  gin.bind_parameter("MaskTransformerPredictor.num_classes", 3)
  gin.bind_parameter("MaskTransformerPredictor.embedding_dim", 16)
  gin.bind_parameter("MaskTransformerPredictor.pixel_head_dim", 16)
  try:
    model = MaskTransformer(
        pixel_encoder=_encoder(),
        pixel_decoder=KMaXPixelDecoder(num_blocks=(1, 1, 1, 1), filters=(16, 8, 8, 8),
                                       expansion=2),
        transformer_decoder=KMaXTransformerDecoder(
            num_centers=4, num_blocks=(1, 0, 0), center_dim=16, bottleneck_dim=16,
            num_heads=2, key_dim=8, ffn_dim=32))
    model(tf.zeros([1, 32, 32, 3]))
  finally:
    gin.clear_config()
  return model


def test_written_checkpoint_loads_as_the_pixel_encoder(tmp_path):
  source = _model()
  import_swin.load_swin_state(source.pixel_encoder, _state())
  write_imported_checkpoint(source, str(tmp_path))
  target = _model()
  init_checkpoint.initialize_from_checkpoint(target, str(tmp_path), ["pixel_encoder"])
  _assert_matches_golden(target.pixel_encoder)


def test_imagenet_classifier_file_keeps_fresh_stage_norms():
  """SwinForImageClassification: names under ``swin.``, a final norm and a head, no stage norms."""
  arrays = {f"swin.{k}": v for k, v in _state().items()
            if not k.startswith(("hidden_states_norms.", "swin."))}
  arrays.update({"swin.layernorm.weight": np.ones(64, np.float32),
                 "swin.layernorm.bias": np.zeros(64, np.float32),
                 "classifier.weight": np.zeros((10, 64), np.float32),
                 "classifier.bias": np.zeros(10, np.float32)})
  encoder = _encoder()
  report = import_swin.load_swin_state(encoder, import_swin.strip_prefix(arrays, "swin."))
  assert report == {"assigned": len(encoder.weights) - 8, "stage_norms_kept": 8,
                    "classifier_arrays": 2}
  for norm in encoder.norms:
    np.testing.assert_array_equal(norm.gamma.numpy(), 1.0)
    np.testing.assert_array_equal(norm.beta.numpy(), 0.0)


def test_mask2former_prefix_ignores_the_other_parts():
  prefix = "model.pixel_level_module.encoder."
  arrays = {prefix + k: v for k, v in _state().items()}
  arrays["model.transformer_module.queries_features.weight"] = np.zeros((4, 8), np.float32)
  encoder = _encoder()
  import_swin.load_swin_state(encoder, import_swin.strip_prefix(arrays, prefix))
  _assert_matches_golden(encoder)


def test_a_stored_relative_position_index_is_checked():
  state = _state()
  name = "encoder.layers.0.blocks.1.attention.self.relative_position_index"
  window = _metadata()["config"]["window_size"]
  from deeplab_panoptic.modeling.pixel_encoders.swin import relative_position_index  # pylint: disable=g-import-not-at-top
  good = relative_position_index(window).astype(np.int64)
  import_swin.load_swin_state(_encoder(), dict(state, **{name: good}))
  with pytest.raises(ValueError, match="not the relative position index of window 4"):
    import_swin.load_swin_state(_encoder(), dict(state, **{name: good.T}))


def test_errors_name_what_is_wrong():
  state, encoder = _state(), _encoder()
  with pytest.raises(ValueError, match=r"lacks 1 arrays .*attention.self.key.weight"):
    import_swin.load_swin_state(encoder, {
        k: v for k, v in state.items() if k != "encoder.layers.1.blocks.0.attention.self.key.weight"})
  with pytest.raises(ValueError, match=r"no place in the encoder, e.g. \['encoder.layers.4"):
    import_swin.load_swin_state(encoder, dict(state, **{"encoder.layers.4.blocks.0.x": 1}))
  with pytest.raises(ValueError, match=r"per-stage norms but lacks \['hidden_states_norms.stage2"):
    import_swin.load_swin_state(encoder, {
        k: v for k, v in state.items() if not k.startswith("hidden_states_norms.stage2")})
  bad = dict(state)
  name = "encoder.layers.0.blocks.0.attention.self.relative_position_bias_table"
  bad[name] = np.zeros((169, 1), np.float32)   # window 7's table
  with pytest.raises(ValueError, match=r"relative_position_bias_table \(169, 1\) does not fit"):
    import_swin.load_swin_state(encoder, bad)
  with pytest.raises(ValueError, match=r"no array name starts with --prefix='backbone.'"):
    import_swin.strip_prefix(state, "backbone.")
  with pytest.raises(ValueError, match="cannot read --safetensors="):
    import_swin.read_safetensors(os.path.join(FIXTURE, "golden.npz"), "")


TIMM = os.path.join(FIXTURE, "timm")


def _timm_fixture():
  with open(os.path.join(TIMM, "metadata.json")) as f:
    config = json.load(f)["config"]
  with np.load(os.path.join(TIMM, "golden.npz")) as data:
    golden = {k: data[k] for k in data.files}
  encoder = SwinEncoder(embed_dim=config["embed_dim"], depths=config["depths"],
                        num_heads=config["num_heads"], window_size=config["window_size"],
                        drop_path_rate=0.0)
  encoder(tf.zeros([1, 32, 32, 3]))
  return encoder, import_swin.read_safetensors(os.path.join(TIMM, "model.safetensors"), ""), golden


def _layer_norm(x, gamma=1.0, beta=0.0):
  x = x.astype(np.float64)
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def test_timm_file_equals_timm_swin():
  """timm's names; timm's stage outputs are not normalised, ours are (fresh norms: plain LN)."""
  encoder, state, golden = _timm_fixture()
  report = import_swin.load_swin_state(encoder, state)   # naming found: timm
  assert report == {"assigned": len(encoder.weights) - 8, "stage_norms_kept": 8,
                    "classifier_arrays": 4}   # norm.{weight,bias}, head.fc.{weight,bias}
  outputs = encoder(tf.constant(golden["image"]), training=False)
  for i, s in enumerate(STRIDES):
    np.testing.assert_allclose(outputs[f"stride{s}"].numpy(), _layer_norm(golden[f"stage{i + 1}"]),
                               rtol=0, atol=1e-4, err_msg=f"stride{s}")


def test_mask2former_original_layout():
  """Patch merging at the end of a stage (``layers.{i}.downsample``) and stage norms ``norm{i}``."""
  encoder, state, golden = _timm_fixture()
  renamed = {}
  for name, value in state.items():
    if ".downsample." in name:
      stage = int(name.split(".")[1])
      name = name.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
    if not name.startswith(("norm.", "head.")):
      renamed[name] = value
  rng = np.random.default_rng(5)
  for i, c in enumerate(encoder.output_channels.values()):
    renamed[f"norm{i}.weight"] = (1 + 0.2 * rng.normal(size=c)).astype(np.float32)
    renamed[f"norm{i}.bias"] = (0.2 * rng.normal(size=c)).astype(np.float32)
  report = import_swin.load_swin_state(encoder, renamed, naming="timm")
  assert report["assigned"] == len(encoder.weights) and report["stage_norms_kept"] == 0
  outputs = encoder(tf.constant(golden["image"]), training=False)
  for i, s in enumerate(STRIDES):
    want = _layer_norm(golden[f"stage{i + 1}"], renamed[f"norm{i}.weight"], renamed[f"norm{i}.bias"])
    np.testing.assert_allclose(outputs[f"stride{s}"].numpy(), want, rtol=0, atol=1e-4)


def test_unknown_naming_is_one_clear_error():
  with pytest.raises(ValueError, match=r"neither 'embeddings.patch_embeddings.projection.weight'"):
    import_swin.load_swin_state(_encoder(), {"backbone.x": np.zeros(1)})
