"""Every published recipe evaluates during train_and_eval, not only at its end.

Read with the start-up checker (``cli/preflight``, no TensorFlow): the binding
in force for ``ExperimentConfig.eval_interval`` after the recipe's includes.
"""

import glob
import os

import pytest

from deeplab_panoptic.cli import preflight
from tests.conftest import REPO_ROOT

LONG_RECIPES = sorted(
    os.path.relpath(p, REPO_ROOT)
    for folder in ("coco", "cityscapes", "ade20k")
    for p in glob.glob(os.path.join(REPO_ROOT, "experiments", folder, "*.gin")))


def _value(config, param):
  binding = config.binding(preflight.EXPERIMENT, param)
  assert binding is not None, f"ExperimentConfig.{param} is not bound"
  return config.resolve(binding.value)


def test_there_are_long_recipes():
  assert len(LONG_RECIPES) >= 30


@pytest.mark.parametrize("recipe", LONG_RECIPES)
def test_long_recipe_evaluates_every_few_thousand_steps(recipe):
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)   # includes are relative to the checkout
  try:
    config = preflight.check_gin([recipe], [])
  finally:
    os.chdir(cwd)
  steps, interval = _value(config, "train_steps"), _value(config, "eval_interval")
  # Between 5k and 16k steps (an epoch of COCO at 8 images for Panoptic
  # SegFormer); the last evaluation falls on the last step.
  assert 5000 <= interval <= 16000, (recipe, interval)
  assert steps % interval == 0, (recipe, steps, interval)
