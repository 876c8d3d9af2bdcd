"""Every recipe under experiments/ parses: no unknown configurable, parameter or macro.

gin checks parameter names against the registered signatures when a file is
parsed, so a typo in a COCO recipe fails here instead of hours into a TPU job.
"""

import glob
import os

import gin
import pytest

from deeplab_panoptic import main as main_lib
from deeplab_panoptic.data.input_config import InputConfig
from deeplab_panoptic.training.experiment import ExperimentConfig
from tests.conftest import REPO_ROOT

RECIPE_FILES = sorted(os.path.relpath(p, REPO_ROOT) for p in
                      glob.glob(os.path.join(REPO_ROOT, "experiments", "**", "*.gin"),
                                recursive=True))


def test_there_are_recipes_for_every_family():
  names = " ".join(RECIPE_FILES)
  for family in ("kmax", "remax", "max_deeplab", "cmt_deeplab", "panoptic_segformer"):
    assert family in names, family
  assert len(RECIPE_FILES) >= 40


@pytest.mark.parametrize("recipe", RECIPE_FILES)
def test_recipe_parses_and_its_config_resolves(recipe, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  gin.clear_config()
  try:
    main_lib.parse_gin([recipe], [])
    # The dataset's class list may come from converted data (ADE20K), so only the
    # run's own settings are resolved here.
    config = ExperimentConfig()
  finally:
    gin.clear_config()
  assert config.train_steps > 0 and config.train_batch_size > 0
  assert len(config.eval_input_size) == 2


@pytest.mark.parametrize("recipe", RECIPE_FILES)
def test_the_crop_size_is_bound_once(recipe, monkeypatch):
  """InputConfig.crop_size is the one binding: evaluation and export follow it."""
  monkeypatch.chdir(REPO_ROOT)
  gin.clear_config()
  try:
    main_lib.parse_gin([recipe], [])
    crop_size = InputConfig().crop_size
    for copy in ("PanopticExportModule.input_size", "build_dataset.crop_size"):
      with pytest.raises(ValueError):
        gin.query_parameter(copy)
    try:
      eval_size = gin.query_parameter("ExperimentConfig.eval_input_size")
    except ValueError:  # Unbound: the crop size.
      eval_size = None
    config = ExperimentConfig()
  finally:
    gin.clear_config()
  # A recipe may measure FLOPs at another size (Panoptic SegFormer: 800 x 1200).
  assert tuple(config.eval_input_size) == (tuple(eval_size) if eval_size else crop_size)


def test_a_typo_is_caught(tmp_path, monkeypatch):
  """The check above can fail: a misspelt parameter is an error at parse time."""
  monkeypatch.chdir(REPO_ROOT)
  bad = tmp_path / "typo.gin"
  bad.write_text("include 'experiments/quickstart/kmax_deeplab_shapes.gin'\n"
                 "ExperimentConfig.train_stepz = 10\n")
  gin.clear_config()
  try:
    with pytest.raises(main_lib.UsageError, match="train_stepz"):
      main_lib.parse_gin([str(bad)], [])
  finally:
    gin.clear_config()
