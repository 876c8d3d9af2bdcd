"""Training augmentations keep masks disjoint and labels consistent with the image.

The records used here have *colour-coded* images: each source segment is painted
in its own colour, so after any geometric augmentation (scale, short-side
resize, flip, crop, copy-paste) the image pixel says which source segment it
came from, and the label must agree with it.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.data import coco_format
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import shapes
from deeplab_panoptic.data import tfrecord
from tests.data.pipeline_args import build_dataset_from_flat

from tests.conftest import COCO_SAMPLE_DIR as SAMPLE


def _write(path, examples, info):
  with tf.io.TFRecordWriter(path) as writer:
    for name, image, panoptic in examples:
      writer.write(tfrecord.make_example(
          tfrecord.encode_png(image), "png", name, image.shape[0], image.shape[1],
          panoptic, info.label_divisor, info.ignore_label).SerializeToString())


def _shapes_records(tmp_path):
  """Shapes labels; colour = (instance, 40 * class + 20, 77) per panoptic value."""
  info = dataset_info.SHAPES
  examples, code = [], {}
  for i in range(4):
    _, panoptic = shapes.generate_example(3, i)
    cls, inst = panoptic // 256, panoptic % 256
    image = np.stack([inst, 40 * cls + 20, np.full_like(inst, 77)], -1).astype(np.uint8)
    for value in np.unique(panoptic).tolist():
      code[(value % 256, 40 * (value // 256) + 20, 77)] = value
    examples.append((f"s{i}.png", image, panoptic))
  path = str(tmp_path / "shapes.tfrecord")
  _write(path, examples, info)
  return path, info, code


def _coco_records(tmp_path):
  """The real sample: the image is the COCO PNG itself (colour = segment id)."""
  info = dataset_info.dataset_info(name="coco")
  entries = coco_format.load_annotations(
      f"{SAMPLE}/panoptic_examples.json", f"{SAMPLE}/panoptic_examples",
      f"{SAMPLE}/input_images", info)
  examples, code = [], {}
  origin = {}
  for entry in entries:
    _, _, panoptic = coco_format.read_example(entry, info)
    ids = coco_format.read_id_png(entry.label_file)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    for value in np.unique(panoptic).tolist():
      source_ids = np.unique(ids[panoptic == value])
      for sid in source_ids.tolist():
        code[(sid % 256, sid // 256 % 256, sid // 65536)] = value
        if sid:
          origin[(sid % 256, sid // 256 % 256, sid // 65536)] = entry.file_name
    examples.append((entry.file_name, rgb, panoptic))
  path = str(tmp_path / "coco.tfrecord")
  _write(path, examples, info)
  _coco_records.origin = origin
  return path, info, code


def _check_example(example, info, code):
  """Masks disjoint and matching the label; label matching the colour-coded image."""
  d = info.label_divisor
  panoptic = example[common.GT_PANOPTIC]
  semantic = panoptic // d
  instance = panoptic % d
  void = semantic == info.ignore_label
  thing = np.isin(semantic, info.thing_ids)
  # Targets: one slot per stuff class / thing instance, pixel sets disjoint by
  # construction of GT_MASK_ID; recompute and compare.
  key = np.where(thing, panoptic, semantic * d)
  has_mask = ~void & (~thing | (instance > 0))
  expected = sorted(set(key[has_mask].tolist()))
  classes = example[common.GT_CLASSES]
  mask_id = example[common.GT_MASK_ID]
  assert (classes >= 0).sum() == len(expected)
  for slot, slot_key in enumerate(expected):
    np.testing.assert_array_equal(mask_id == slot, has_mask & (key == slot_key))
    assert classes[slot] == slot_key // d
    assert example[common.GT_IS_THING][slot] == info.classes[classes[slot]].is_thing
  np.testing.assert_array_equal(example[common.GT_CROWD], thing & (instance == 0))
  np.testing.assert_array_equal(example[common.GT_SEMANTIC],
                                np.where(void, info.ignore_label, semantic))
  # Label vs image: at pixels whose 3x3 label neighbourhood is uniform (away
  # from interpolation at boundaries), the colour names a source segment of the
  # same class and crowd state; one output segment comes from one source segment.
  height, width = panoptic.shape
  rh, rw = example[common.RESIZED_HEIGHT], example[common.RESIZED_WIDTH]
  rgb = np.round((example[common.IMAGE] + 1.0) * 127.5).astype(np.int64)
  padded = np.pad(panoptic, 1, mode="edge")
  uniform = np.ones_like(panoptic, bool)
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      uniform &= padded[dy:dy + height, dx:dx + width] == panoptic
  inside = np.zeros_like(uniform)
  inside[:max(rh - 1, 0), :max(rw - 1, 0)] = True
  check = uniform & inside
  assert check.sum() > 0.3 * rh * rw
  source = np.array([code.get(tuple(c), -1) for c in rgb[check].tolist()])
  label = panoptic[check]
  same_class = source // d == label // d
  crowd = lambda v: np.isin(v // d, info.thing_ids) & (v % d == 0)
  same_crowd = crowd(source) == crowd(label)
  # Bilinear image vs nearest-neighbour label: a few pixels near thin
  # structures blend two colours (no source) -- but a decoded colour must agree.
  decoded = source >= 0
  agree = decoded & same_class & same_crowd
  assert decoded.mean() > 0.98, (decoded.mean(), example[common.IMAGE_NAME])
  assert agree.sum() >= 0.998 * decoded.sum(), (agree.sum(), decoded.sum(),
                                                example[common.IMAGE_NAME])
  for value in np.unique(label[agree]).tolist():
    sources, counts = np.unique(source[agree & (label == value)], return_counts=True)
    assert counts.max() >= 0.99 * counts.sum(), (value, sources, counts)
  # Padding: image 0, label void.
  assert (example[common.IMAGE][rh:] == 0).all() and (example[common.IMAGE][:, rw:] == 0).all()
  assert (void[rh:]).all() and (void[:, rw:]).all()


def _examples(path, info, batches=3, **kwargs):
  args = dict(is_training=True, batch_size=4, max_num_masks=64, seed=11,
              flip_probability=0.5, shuffle_buffer=8, num_parallel_calls=2)
  args.update(kwargs)
  ds = build_dataset_from_flat(path, info, **args)
  out = []
  for batch in ds.take(batches).as_numpy_iterator():
    for i in range(len(batch[common.IMAGE_NAME])):
      out.append({k: v[i] for k, v in batch.items()})
  return out


@pytest.mark.parametrize("copy_paste", [False, True])
def test_shapes_augmentation_is_consistent(tmp_path, copy_paste):
  path, info, code = _shapes_records(tmp_path)
  for example in _examples(path, info, crop_size=(96, 112), min_scale=0.5,
                           max_scale=1.5, scale_step=0.25, copy_paste=copy_paste,
                           max_num_masks=16):
    _check_example(example, info, code)


def test_real_sample_scale_crop_copy_paste_is_consistent(tmp_path):
  path, info, code = _coco_records(tmp_path)
  examples = _examples(path, info, batches=2, crop_size=(321, 321), min_scale=0.3,
                       max_scale=1.7, scale_step=0.1, copy_paste=True)
  pasted = 0
  for example in examples:
    _check_example(example, info, code)
    rgb = np.round((example[common.IMAGE] + 1.0) * 127.5).astype(np.int64)
    sources = {_coco_records.origin.get(tuple(c)) for c in rgb.reshape(-1, 3).tolist()}
    pasted += example[common.IMAGE_NAME].decode() in sources and len(sources - {None}) == 2
  assert pasted  # Some crops hold segments of both images.


def test_real_sample_short_side_resize_is_consistent(tmp_path):
  path, info, code = _coco_records(tmp_path)
  examples = _examples(path, info, batches=2, crop_size=(480, 480),
                       train_resize="random_short_side", min_short_side=200,
                       max_short_side=320, short_side_step=40, max_long_side=400)
  for example in examples:
    _check_example(example, info, code)
    rh, rw = int(example[common.RESIZED_HEIGHT]), int(example[common.RESIZED_WIDTH])
    # COCO sample images are landscape (427x640, 480x640).
    assert rw <= 400 and (rh in (200, 240, 280, 320) or rw == 400), (rh, rw)



@pytest.mark.parametrize("shape", [(60, 100), (100, 60), (30, 20)])
def test_random_scale_of_crop_sizes_by_hand(shape):
  """Large-scale jitter: factor x the scale that fits the crop, hand-worked sizes."""
  from deeplab_panoptic.data import preprocessing  # pylint: disable=import-outside-toplevel
  image = tf.zeros(shape + (3,), tf.float32)
  label = tf.zeros(shape + (1,), tf.int32)
  crop = (64, 80)
  fit = min(crop[0] / shape[0], crop[1] / shape[1])  # (60, 100): 0.8 (width touches)
  expected = {tuple(int(np.floor(s * f * fit + 0.5)) for s in shape) for f in (0.5, 1.0, 1.5)}
  seen = set()
  for i in range(40):
    out, out_label = preprocessing.random_scale_of_crop(
        image, label, tf.constant([i, 7]), 0.5, 1.5, 0.5, crop)
    seen.add(tuple(out.shape[:2]))
    assert out_label.shape[:2] == out.shape[:2]
  assert seen == expected, (seen, expected)
  # Uniform factor (step 0, as detectron2's ResizeScale): the side that touches
  # the crop at factor 1 lies in [0.1, 2.0] x its crop side.
  touching = 0 if crop[0] / shape[0] <= crop[1] / shape[1] else 1
  for i in range(20):
    out, _ = preprocessing.random_scale_of_crop(image, label, tf.constant([i, 3]), 0.1,
                                                2.0, 0.0, crop)
    side = out.shape[touching]
    assert 0.1 * crop[touching] - 1 <= side <= 2.0 * crop[touching] + 1, (i, out.shape)


def test_augment_geometry_dispatches_random_scale_of_crop():
  """The mode reaches the pipeline's geometry: at factor 1 a 60x100 image fits 64x80."""
  from deeplab_panoptic.data import input_config  # pylint: disable=import-outside-toplevel
  from deeplab_panoptic.data import preprocessing  # pylint: disable=import-outside-toplevel
  decoded = {common.IMAGE: tf.fill([60, 100, 3], tf.constant(200, tf.uint8)),
             common.GT_PANOPTIC: tf.fill([60, 100], 3 * 1000 + 1)}
  sizes = {}
  for mode in ("random_scale_of_crop", "random_scale"):
    aug = input_config.AugmentationConfig(train_resize=mode, min_scale=1.0, max_scale=1.0,
                                          flip_probability=0.0)
    image, label, resized = preprocessing.augment_geometry(
        decoded, tf.constant([1, 2]), crop_size=(64, 80), label_divisor=1000,
        ignore_label=255, augmentation=aug)
    sizes[mode] = tuple(resized.numpy())
    assert image.shape == (64, 80, 3) and label.shape == (64, 80)
  # Factor 1 of the fitting scale min(64 / 60, 80 / 100) = 0.8: 48 x 80. The
  # plain random scale keeps 60 x 100, of which the 64 x 80 crop holds 60 x 80.
  assert sizes == {"random_scale_of_crop": (48, 80), "random_scale": (60, 80)}


def test_color_jitter_changes_only_the_image(tmp_path):
  path, info, _ = _shapes_records(tmp_path)
  common_args = dict(crop_size=(144, 128), min_scale=0.75, max_scale=1.0, scale_step=0.25,
                     batches=1)
  plain = _examples(path, info, **common_args)
  jittered = _examples(path, info, brightness=0.4, contrast=0.4, saturation=0.4,
                       hue=0.1, **common_args)
  for a, b in zip(plain, jittered):
    for key in a:
      if key != common.IMAGE:
        np.testing.assert_array_equal(a[key], b[key])
    rh, rw = a[common.RESIZED_HEIGHT], a[common.RESIZED_WIDTH]
    assert not np.allclose(a[common.IMAGE][:rh, :rw], b[common.IMAGE][:rh, :rw])
    assert (b[common.IMAGE][rh:] == 0).all() and (b[common.IMAGE][:, rw:] == 0).all()
    assert b[common.IMAGE].min() >= -1.0 and b[common.IMAGE].max() <= 1.0


def test_deterministic_mode_without_seed(tmp_path):
  path, info, _ = _shapes_records(tmp_path)
  args = dict(crop_size=(64, 64), min_scale=0.5, max_scale=1.5, seed=None,
              deterministic=True, copy_paste=True, brightness=0.2, batches=2)
  a, b = _examples(path, info, **args), _examples(path, info, **args)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_input_context_shards_between_hosts(tmp_path):
  path, info, _ = _shapes_records(tmp_path)
  names = []
  for host in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=host,
                                         num_replicas_in_sync=2)
    ds = build_dataset_from_flat(path, info, is_training=False, batch_size=2,
                                 crop_size=(128, 128), input_context=context,
                                 pad_last_batch=False)
    names.append([n for b in ds.as_numpy_iterator() for n in b[common.IMAGE_NAME]])
  assert len(names[0]) == len(names[1]) == 2
  assert sorted(names[0] + names[1]) == [f"s{i}.png".encode() for i in range(4)]


def test_eval_longer_side_to_crop_upscales_and_keeps_the_original(tmp_path):
  path, info, _ = _shapes_records(tmp_path)
  default = build_dataset_from_flat(path, info, is_training=False, batch_size=1,
                                    crop_size=(200, 256), max_original_size=(128, 128))
  batch = next(default.as_numpy_iterator())
  assert (batch[common.RESIZED_HEIGHT][0], batch[common.RESIZED_WIDTH][0]) == (128, 128)
  ds = build_dataset_from_flat(path, info, is_training=False, batch_size=1,
                               crop_size=(200, 256), max_original_size=(128, 128),
                               eval_resize="longer_side_to_crop")
  up = next(ds.as_numpy_iterator())
  assert (up[common.RESIZED_HEIGHT][0], up[common.RESIZED_WIDTH][0]) == (200, 200)
  np.testing.assert_array_equal(up[common.GT_PANOPTIC_ORIGINAL],
                                batch[common.GT_PANOPTIC_ORIGINAL])
  assert (up[common.GT_PANOPTIC][0][:, 200:] == 255 * 256).all()
  with pytest.raises(ValueError, match="eval_resize must be one of"):
    build_dataset_from_flat(path, info, is_training=False, batch_size=1, crop_size=(8, 8),
                            eval_resize="bogus")
