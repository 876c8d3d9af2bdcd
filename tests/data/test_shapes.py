"""Tests of the synthetic shapes dataset."""

import numpy as np
import pytest
from scipy import ndimage

from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import shapes

INFO = dataset_info.SHAPES


def _segments(panoptic):
  """{panoptic id: pixel count}, computed with numpy."""
  ids, counts = np.unique(panoptic, return_counts=True)
  return dict(zip(ids.tolist(), counts.tolist()))


def test_output_types_and_convention():
  image, panoptic = shapes.generate_example(0, 0)
  assert image.dtype == np.uint8 and image.shape == (128, 128, 3)
  assert panoptic.dtype == np.int32 and panoptic.shape == (128, 128)
  semantic = panoptic // INFO.label_divisor
  instance = panoptic % INFO.label_divisor
  assert set(np.unique(semantic)) <= set(range(INFO.num_classes))
  stuff = np.isin(semantic, INFO.stuff_ids)
  assert np.all(instance[stuff] == 0)
  assert np.all(instance[~stuff] > 0)  # No crowd, no void.


def test_deterministic_by_seed_and_index():
  image_a, panoptic_a = shapes.generate_example(7, 3)
  for index in range(3):  # Other images in between change nothing.
    shapes.generate_example(7, index)
  image_b, panoptic_b = shapes.generate_example(7, 3)
  np.testing.assert_array_equal(image_a, image_b)
  np.testing.assert_array_equal(panoptic_a, panoptic_b)
  image_c, _ = shapes.generate_example(8, 3)
  image_d, _ = shapes.generate_example(7, 4)
  assert not np.array_equal(image_a, image_c)
  assert not np.array_equal(image_a, image_d)


def test_statistics_over_images():
  class_seen = np.zeros(INFO.num_classes, bool)
  num_instances = []
  num_stuff = []
  for index in range(30):
    _, panoptic = shapes.generate_example(1, index)
    segments = _segments(panoptic)
    instances = {}
    for pan_id, area in segments.items():
      cls, inst = divmod(pan_id, INFO.label_divisor)
      class_seen[cls] = True
      if INFO.classes[cls].is_thing:
        # Instance ids are unique over the image, whatever the class.
        assert inst not in instances
        instances[inst] = cls
        # Occlusion never leaves a sliver or cuts an instance in pieces.
        assert area >= 30, (index, pan_id, area)
        pieces = ndimage.label(panoptic == pan_id, np.ones((3, 3)))[1]
        assert pieces == 1, (index, pan_id, pieces)
    assert sorted(instances) == list(range(1, len(instances) + 1))
    assert 1 <= len(instances) <= 6
    num_instances.append(len(instances))
    num_stuff.append(sum(1 for p in segments if p // INFO.label_divisor in INFO.stuff_ids))
  assert class_seen.all()
  assert np.mean(num_instances) >= 3.0
  assert min(num_instances) >= 2
  # Mostly two stuff classes, sometimes one.
  assert 1 in num_stuff and 2 in num_stuff
  assert num_stuff.count(2) > num_stuff.count(1)


def test_things_contrast_with_their_surroundings():
  # The outline of every instance must be visible: the mean colour inside an
  # instance differs from the mean colour of the ring of pixels just outside.
  for index in range(6):
    image, panoptic = shapes.generate_example(2, index)
    for pan_id in np.unique(panoptic):
      if pan_id // INFO.label_divisor not in INFO.thing_ids:
        continue
      mask = panoptic == pan_id
      ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
      inside = image[mask].astype(float).mean(0)
      outside = image[ring].astype(float).mean(0)
      assert np.linalg.norm(inside - outside) > 20, (index, pan_id)


def test_other_sizes():
  image, panoptic = shapes.generate_example(3, 0, height=64, width=96)
  assert image.shape == (64, 96, 3) and panoptic.shape == (64, 96)


def test_bad_arguments():
  with pytest.raises(ValueError, match="seed"):
    shapes.generate_example(-1, 0)
  with pytest.raises(ValueError, match="min_instances"):
    shapes.generate_example(0, 0, min_instances=5, max_instances=2)
