"""The input settings records: checks, gin bindings (scoped), the pasted image's range."""

import gin
import numpy as np
import pytest

from deeplab_panoptic import common
from deeplab_panoptic.data import convert
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import input_config
from deeplab_panoptic.data import reader

INFO = dataset_info.SHAPES


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("shapes"))
  convert.convert(convert.ShapesConverter(num_train=4, num_val=3, seed=2), path,
                  num_shards=1, num_workers=1, verbose=False)
  return path


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("record, kwargs, message", [
    (input_config.InputConfig, {}, r"InputConfig.crop_size is not set"),
    (input_config.InputConfig, {"crop_size": (0, 8)}, r"crop_size must be .*positive"),
    (input_config.InputConfig, {"crop_size": 8}, r"crop_size must be \(height, width\)"),
    (input_config.InputConfig, {"crop_size": (8, 8), "max_num_masks": 0},
     "max_num_masks must be >= 1"),
    (input_config.InputConfig, {"crop_size": (8, 8), "eval_resize": "x"},
     "eval_resize must be one of"),
    (input_config.AugmentationConfig, {"min_scale": 2.0, "max_scale": 1.0},
     "need 0 < min_scale <= max_scale"),
    (input_config.AugmentationConfig, {"train_resize": "x"}, "train_resize must be one of"),
    (input_config.AugmentationConfig, {"min_short_side": 900},
     "need 0 < min_short_side <= max_short_side"),
    (input_config.AugmentationConfig, {"hue": 0.6}, r"hue must lie in \[0, 0.5\]"),
    (input_config.AugmentationConfig, {"contrast": -0.1}, r"contrast must lie in \[0, 1\]"),
])
def test_bad_settings_name_the_setting(clean_gin, record, kwargs, message):
  with pytest.raises(ValueError, match=message):
    record(**kwargs)


def test_defaults_and_the_pasted_images_range(clean_gin):
  config = input_config.InputConfig(crop_size=[64, 96])
  assert config.crop_size == (64, 96) and config.max_original_size == (64, 96)
  aug = input_config.AugmentationConfig(min_scale=0.4, max_scale=1.6, scale_step=0.2,
                                        copy_paste_scale_multiplier=0.5)
  pasted = aug.for_pasted_image()
  np.testing.assert_allclose([pasted.min_scale, pasted.max_scale, pasted.scale_step],
                             [0.2, 0.8, 0.1])
  assert (pasted.min_short_side, pasted.max_short_side, pasted.short_side_step,
          pasted.max_long_side) == (240, 400, 16, 666)   # round(1333 / 2) = 666
  assert pasted.flip_probability == aug.flip_probability


def test_build_dataset_reads_the_records_from_gin_in_its_scope(clean_gin, shapes_dir):
  gin.parse_config("""
      InputConfig.crop_size = (64, 80)
      InputConfig.max_num_masks = 8
      eval/InputConfig.crop_size = (128, 128)
      AugmentationConfig.min_scale = 1.0
      AugmentationConfig.max_scale = 1.0
      train/PipelineConfig.seed = 3
      """)
  with gin.config_scope("train"):
    train = reader.build_dataset(convert.file_pattern(shapes_dir, "train"), INFO,
                                 is_training=True, batch_size=2)
  with gin.config_scope("eval"):
    evaluation = reader.build_dataset(convert.file_pattern(shapes_dir, "val"), INFO,
                                      is_training=False, batch_size=2)
  assert train.element_spec[common.IMAGE].shape == (2, 64, 80, 3)
  assert train.element_spec[common.GT_CLASSES].shape == (2, 8)
  assert evaluation.element_spec[common.IMAGE].shape == (2, 128, 128, 3)
  # Seeded (train scope): two builds give the same batch.
  with gin.config_scope("train"):
    again = reader.build_dataset(convert.file_pattern(shapes_dir, "train"), INFO,
                                 is_training=True, batch_size=2)
  first, second = next(train.as_numpy_iterator()), next(again.as_numpy_iterator())
  np.testing.assert_array_equal(first[common.IMAGE], second[common.IMAGE])


def test_an_old_binding_is_an_error_at_parse_time(clean_gin):
  with pytest.raises(ValueError, match="crop_size"):
    gin.parse_config("build_dataset.crop_size = (8, 8)")
