"""import_hf_mask2former: a transformers save_pretrained folder -> our checkpoint + gin.

The fixtures (tests/fixtures/hf_mask2former/{swin,resnet}, written by
tools/golden/hf_mask2former_golden.py with transformers 5.25.0) are tiny random
``Mask2FormerForUniversalSegmentation`` models with the reference's class and mask
logits, final and auxiliary, on one 64 x 96 image. The parity test reads the model
back the way a recipe does: a fresh model from the written ``model.gin``, its
weights from the written checkpoint.
"""

import json
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file

from deeplab_panoptic import common
from deeplab_panoptic import registry  # pylint: disable=unused-import  (every configurable)
from deeplab_panoptic.cli import recipes
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.tools import import_hf_mask2former as importer
from deeplab_panoptic.training import init_checkpoint
from tests.conftest import REPO_ROOT
from tests.tools.hf_mask2former_fixture import FIXTURES, golden

ATOL = 1e-4


def _restored(output_dir):
  """A fresh MaskTransformer from ``output_dir/model.gin``, restored from its ckpt-0."""
  gin.clear_config()
  recipes.add_search_paths()
  gin.parse_config_file(os.path.join(output_dir, "model.gin"))
  model = MaskTransformer()
  model(tf.zeros([1, 32, 32, 3]), training=False)
  init_checkpoint.initialize_from_checkpoint(model, output_dir)
  return model


@pytest.mark.parametrize("name", ["swin", "resnet"])
def test_logits_equal_transformers_through_the_written_checkpoint(name, tmp_path):
  report = importer.import_model(os.path.join(FIXTURES, name), str(tmp_path))
  model = _restored(str(tmp_path))
  data = golden(name)
  out = model(tf.constant(data["image"]), training=False)
  gin.clear_config()
  # The figure of the docs (pytest -s prints it).
  print(f"{name}: max |class diff| "
        f"{np.abs(out[common.PRED_CLASS_LOGITS] - data['class_logits']).max():.2e}, "
        f"max |mask diff| {np.abs(out[common.PRED_MASK_LOGITS] - data['mask_logits']).max():.2e}")
  np.testing.assert_allclose(out[common.PRED_CLASS_LOGITS], data["class_logits"], atol=ATOL)
  np.testing.assert_allclose(out[common.PRED_MASK_LOGITS], data["mask_logits"], atol=ATOL)
  aux = out[common.AUX_OUTPUTS]
  assert len(aux) == len(data["aux_class_logits"])
  for i, prediction in enumerate(aux):
    np.testing.assert_allclose(prediction[common.PRED_CLASS_LOGITS],
                               data["aux_class_logits"][i], atol=ATOL, err_msg=f"aux {i}")
    np.testing.assert_allclose(prediction[common.PRED_MASK_LOGITS],
                               data["aux_mask_logits"][i], atol=ATOL, err_msg=f"aux {i}")
  # Every array of the file is used once, or ignored for a listed reason.
  weights = load_file(os.path.join(FIXTURES, name, "model.safetensors"))
  assert sum(report["used"].values()) + len(report["ignored"]) == len(weights)
  assert set(report["ignored"].values()) <= {reason for _, reason in importer.IGNORED}
  assert "criterion.empty_weight" in report["ignored"]
  with open(tmp_path / "import_report.json") as f:
    assert json.load(f)["used"] == report["used"]


def _copy(tmp_path, name="resnet"):
  folder = tmp_path / "hf"
  shutil.copytree(os.path.join(FIXTURES, name), folder)
  return folder


def _edit_config(folder, edit):
  with open(folder / "config.json") as f:
    config = json.load(f)
  edit(config)
  with open(folder / "config.json", "w") as f:
    json.dump(config, f)


def test_folder_errors_are_one_line_naming_the_path(tmp_path):
  with pytest.raises(ValueError, match="no such directory"):
    importer.import_model(str(tmp_path / "absent"), str(tmp_path / "out"))
  folder = _copy(tmp_path)
  os.remove(folder / "model.safetensors")
  with pytest.raises(ValueError, match="has neither model.safetensors nor"):
    importer.import_model(str(folder), str(tmp_path / "out"))
  os.remove(folder / "config.json")
  with pytest.raises(ValueError, match=r"has no config.json"):
    importer.import_model(str(folder), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["backbone_config"].update(model_type="convnext"),
     "unknown backbone type backbone_config.model_type = 'convnext'"),
    (lambda c: c["backbone_config"].update(layer_type="basic"),
     "backbone_config.layer_type = 'basic' is not supported"),
    (lambda c: c.update(pre_norm=True), "config.pre_norm = True is not supported"),
    (lambda c: c.update(model_type="maskformer"), "not 'mask2former'"),
], ids=["backbone_type", "basic_blocks", "pre_norm", "model_type"])
def test_unsupported_configs_fail_before_tensorflow_builds(tmp_path, edit, message):
  folder = _copy(tmp_path)
  _edit_config(folder, edit)
  with pytest.raises(ValueError, match=message):
    importer.gin_text(str(folder), importer.read_config(str(folder)))


def test_misshapen_and_unplaced_arrays_are_named():
  folder = os.path.join(FIXTURES, "resnet")
  config = importer.read_config(folder)
  model = importer.build_model(importer.gin_text(folder, config), (32, 32))
  weights = load_file(os.path.join(folder, "model.safetensors"))
  key = "model.transformer_module.decoder.layers.1.fc1.weight"
  with pytest.raises(ValueError, match=f"'{key}' has shape"):
    importer.assign_model(model, dict(weights, **{key: weights[key][:, :-1]}))
  key = "model.pixel_level_module.encoder.encoder.stages.2.layers.0.layer.1.convolution.weight"
  with pytest.raises(ValueError, match=f"{key} .* does not fit"):
    importer.assign_model(model, dict(weights, **{key: weights[key][:-1]}))
  with pytest.raises(ValueError, match=r"1 arrays of the file have no place.*extra_head"):
    importer.assign_model(model, dict(weights, extra_head=np.zeros([2], np.float32)))
  gin.clear_config()


def test_preprocessor_mean_and_std_go_to_the_gin(tmp_path):
  folder = _copy(tmp_path)
  with open(folder / "preprocessor_config.json", "w") as f:
    json.dump({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0]}, f)
  text = importer.gin_text(str(folder), importer.read_config(str(folder)))
  assert "InputNormalization.mean = (0.5, 0.5, 0.5)" in text
  assert "InputNormalization.std = (0.25, 0.5, 1.0)" in text
  assert "include" not in text


def test_command_line_error_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "deeplab_panoptic.tools.import_hf_mask2former",
       f"--hf_model_dir={tmp_path / 'absent'}", f"--output_dir={tmp_path / 'out'}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f"import_hf_mask2former: --hf_model_dir={tmp_path / 'absent'}: no such directory."]


def _recipe_value(parameter: str):
  """What the parsed recipe gives ``Configurable.parameter``: its binding, or the
  constructor's default (Swin's variant fills its widths, ResNet's model_id its depths)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.pixel_encoders import swin, torchvision_resnet  # pylint: disable=g-import-not-at-top
  try:
    value = gin.query_parameter(parameter)
  except ValueError:
    value = None
  if isinstance(value, gin.config.ConfigurableReference):
    text = str(value)
    return gin.query_parameter(text) if text.startswith("%") else text
  if value is not None:
    return value
  configurable, name = parameter.split(".")
  if configurable == "SwinEncoder" and name in ("embed_dim", "depths", "num_heads"):
    return swin.VARIANTS[gin.query_parameter("SwinEncoder.variant")][name]
  if configurable == "TorchvisionResNetEncoder" and name == "depths":
    return torchvision_resnet.DEPTHS[gin.query_parameter("TorchvisionResNetEncoder.model_id")]
  classes = {"SwinEncoder": swin.SwinEncoder,
             "TorchvisionResNetEncoder": torchvision_resnet.TorchvisionResNetEncoder}
  return inspect.signature(classes[configurable].__init__).parameters[name].default


@pytest.mark.parametrize("name, recipe_model", [
    ("swin_s", "configs/models/mask2former_swin_s.gin"),
    ("r50", "configs/models/mask2former_r50.gin")])
def test_imported_gin_is_the_recipes_model(name, recipe_model):
  # transformers' default Mask2FormerConfig (the hub's COCO panoptic checkpoints) must
  # give exactly the model our recipes build, so its ckpt-0 restores into them.
  folder = os.path.join(FIXTURES, "full_configs", name)
  text = importer.gin_text(folder, importer.read_config(folder))
  bindings = [line.split(" = ", 1) for line in text.splitlines()
              if " = " in line and not line.startswith("#")]
  gin.clear_config()
  recipes.add_search_paths()
  gin.parse_config_files_and_bindings([os.path.join(REPO_ROOT, recipe_model)],
                                      ["NUM_CLASSES = 133"])
  try:
    for parameter, value in bindings:
      want = eval(value) if not value.startswith("@") else value  # pylint: disable=eval-used
      got = _recipe_value(parameter)
      got = tuple(got) if isinstance(got, list) else got
      assert got == want, parameter
  finally:
    gin.clear_config()
