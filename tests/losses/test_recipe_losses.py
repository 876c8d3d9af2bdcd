"""Every recipe's loss gives the values the loss had before it became a criterion.

tests/fixtures/losses/recipe_losses.json holds, for every recipe under
experiments/ and a few ablations, the loss dict that the one-class losses
(MaX / kMaX / CMT / ReMaX `MaskTransformerLoss`, `PanopticSegFormerLoss`,
commit c96a96e) computed on the fixed inputs of `golden_inputs.py`. The
recipes now build a `Criterion` from configs/losses/; its names and values
must be the same (the terms' arithmetic did not change, so to float32
rounding).
"""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import main as main_lib
from deeplab_panoptic.training.experiment import ExperimentConfig
from tests.conftest import REPO_ROOT
from tests.losses import builders
from tests.losses import golden_inputs

with open(os.path.join(REPO_ROOT, "tests", "fixtures", "losses",
                       "recipe_losses.json"), encoding="utf-8") as _f:
  GOLDEN = json.load(_f)

# Ablations of the fixture: (recipe, the same change in today's gin names).
_ABLATIONS = {
    "remax_no_relaxation": ("experiments/quickstart/remax_shapes.gin",
                            ["REMASK_STAGES = 0", "ReClass.eta = 0.0"]),
    "remax_sigmoid": ("experiments/quickstart/remax_shapes.gin",
                      ["Criterion.mask_activation = 'sigmoid'"]),
    "cmt_no_location": ("experiments/quickstart/cmt_deeplab_shapes.gin",
                        ["CMT_LOCATION = False",
                         "MaskApproximation.weight = 0.0"]),
}
# Options no recipe uses, in the fixture as the old classes' arguments.
_OPTIONS = {
    "max_options": lambda: builders.max_criterion(
        matcher_method="scipy", matching_mode="per_stage", crowd_as_void=True,
        instance_discrimination_anchors="all",
        negative_class_weighting="void_fraction", semantic_top_k_percent=0.5,
        aux_weight=0.5, mask_id_weight=0.0),
    "psf_options": lambda: builders.psf_criterion(
        matcher_method="scipy", matching_mode="shared",
        dice_squared_denominator=True, aux_weight=0.5,
        mask_activation="softmax", crowd_as_void=True,
        matching_class_weight=2.0, matching_dice_weight=0.5, focal_alpha=0.3,
        focal_gamma=1.5, dice_smooth=0.5),
}


def _recipe_loss(recipe, params):
  gin.clear_config()
  try:
    main_lib.parse_gin([recipe], params)
    return ExperimentConfig().loss()
  finally:
    gin.clear_config()


def _check(loss_fn, expected):
  for variant in golden_inputs.VARIANTS:
    batch, outputs = golden_inputs.make_inputs(variant)
    losses = loss_fn(tf.nest.map_structure(tf.constant, batch),
                     tf.nest.map_structure(tf.constant, outputs))
    assert set(losses) == set(expected[variant]), variant
    for name, value in expected[variant].items():
      np.testing.assert_allclose(losses[name].numpy(), value, rtol=1e-6,
                                 atol=1e-7, err_msg=f"{variant}: {name}")


def test_every_recipe_of_the_fixture_still_exists():
  """A renamed recipe must be renamed in the fixture too (recipes added after
  the change, e.g. per-pixel ones, have no pre-criterion value)."""
  recipes = set()
  for root, _, files in os.walk(os.path.join(REPO_ROOT, "experiments")):
    recipes |= {os.path.relpath(os.path.join(root, f), REPO_ROOT)
                for f in files if f.endswith(".gin")}
  assert set(GOLDEN["recipes"]) <= recipes, set(GOLDEN["recipes"]) - recipes


@pytest.mark.parametrize("recipe", sorted(GOLDEN["recipes"]))
def test_recipe_loss_is_unchanged(recipe, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  _check(_recipe_loss(recipe, []), GOLDEN["recipes"][recipe])


@pytest.mark.parametrize("case", sorted(_ABLATIONS))
def test_ablation_loss_is_unchanged(case, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  recipe, params = _ABLATIONS[case]
  _check(_recipe_loss(recipe, params), GOLDEN["cases"][case])


@pytest.mark.parametrize("case", sorted(_OPTIONS))
def test_option_loss_is_unchanged(case):
  _check(_OPTIONS[case](), GOLDEN["cases"][case])
