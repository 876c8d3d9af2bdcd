"""Every mask-transformer recipe gives Mask2Former's semantic / instance results via gin.

The postprocessor each recipe builds (nothing else is built) is a
``MaskResultsPostprocessor`` whose mask activation is the one the recipe trains
with (``Criterion.mask_activation``), whose panoptic merging is the family's
(passed through unchanged), and which declares the instance masks.
"""

import glob
import os

import gin
import pytest

from deeplab_panoptic import main as main_lib
from deeplab_panoptic.data.dataset_info import SHAPES
from deeplab_panoptic.postprocess.mask_merging import MaskWiseMergingPostprocessor
from deeplab_panoptic.postprocess.mask_results import MaskResultsPostprocessor
from deeplab_panoptic.postprocess.maskformer_merging import MaskFormerMergingPostprocessor
from deeplab_panoptic.postprocess.panoptic import PixelwisePanopticPostprocessor
from deeplab_panoptic.training.experiment import ExperimentConfig
from tests.conftest import REPO_ROOT

MASK_RECIPES = sorted(
    os.path.relpath(p, REPO_ROOT)
    for p in glob.glob(os.path.join(REPO_ROOT, "experiments", "**", "*.gin"), recursive=True)
    if "deeplabv3plus" not in os.path.basename(p))

# The family's panoptic merging, by the recipe's family (None: a semantic- or
# instance-only Mask2Former recipe).
_MERGING = {
    "panoptic_segformer": MaskWiseMergingPostprocessor,
    "cmt_deeplab_axial": MaskFormerMergingPostprocessor,   # the paper's mask-wise merging
    "mask2former": MaskFormerMergingPostprocessor,
}


def _expected_merging(recipe):
  name = os.path.basename(recipe)
  for prefix, cls in _MERGING.items():
    if name.startswith(prefix):
      return cls
  return PixelwisePanopticPostprocessor


def test_there_are_mask_recipes():
  assert len(MASK_RECIPES) >= 35


@pytest.mark.parametrize("recipe", MASK_RECIPES)
def test_recipe_builds_mask_results_with_its_training_activation(recipe, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  gin.clear_config()
  try:
    main_lib.parse_gin([recipe], [])
    post = ExperimentConfig().postprocessor(
        is_thing=SHAPES.is_thing, label_divisor=SHAPES.label_divisor,
        ignore_label=SHAPES.ignore_label)
    trained = gin.query_parameter("Criterion.mask_activation")
  finally:
    gin.clear_config()
  assert isinstance(post, MaskResultsPostprocessor), type(post).__name__
  assert post.mask_activation == trained
  inner = post._inner  # pylint: disable=protected-access
  if inner is None:     # Mask2Former's semantic / instance recipes
    assert "mask2former" in recipe and post.results <= {"semantic", "instance_masks"}
    return
  assert post.results == {"panoptic", "semantic", "instance_masks"}
  expected = _expected_merging(recipe)
  if "cmt_deeplab_axial" in recipe and "1281" not in recipe:
    expected = PixelwisePanopticPostprocessor   # CMT's 641 ablations: MaX's argmax
  assert type(inner) is expected, type(inner).__name__
  assert post.class_activation == ("sigmoid" if expected is MaskWiseMergingPostprocessor
                                   else "softmax")
