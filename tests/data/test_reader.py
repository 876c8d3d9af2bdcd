"""Tests of the input pipeline (preprocessing + reader)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.data import convert
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import preprocessing
from deeplab_panoptic.data import reader
from deeplab_panoptic.data import shapes
from deeplab_panoptic.data import tfrecord
from tests.data.pipeline_args import build_dataset_from_flat

INFO = dataset_info.SHAPES
VOID = INFO.ignore_label * INFO.label_divisor
SEED = 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("shapes"))
  convert.convert(convert.ShapesConverter(num_train=6, num_val=5, seed=SEED), path,
                  num_shards=2, num_workers=1, verbose=False)
  return path


def _original(name):
  """Regenerates the image and label of a record from its file name."""
  _, split, index = name.decode().rsplit(".", 1)[0].split("_")
  offset = 0 if split == "train" else convert.SHAPES_VAL_INDEX_OFFSET
  return shapes.generate_example(SEED, offset + int(index))


def _normalise(image):
  return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _check_masks(panoptic, mask_id, classes, is_thing):
  """Checks GT_MASK_ID / GT_CLASSES / GT_IS_THING against a numpy recomputation."""
  semantic = panoptic // INFO.label_divisor
  instance = panoptic % INFO.label_divisor
  void = semantic == INFO.ignore_label
  thing = np.isin(semantic, INFO.thing_ids)
  # Expected segments: one per stuff class, one per thing instance.
  key = np.where(thing, panoptic, semantic * INFO.label_divisor)
  has_mask = ~void & (~thing | (instance > 0))
  expected = sorted(set(key[has_mask].tolist()))
  valid = classes >= 0
  assert valid.sum() == len(expected)
  # Filled slots first, in increasing panoptic id.
  assert valid[:len(expected)].all() and not valid[len(expected):].any()
  reconstructed = np.full(panoptic.shape, -1, np.int64)
  for slot, slot_key in enumerate(expected):
    pixels = mask_id == slot
    np.testing.assert_array_equal(pixels, has_mask & (key == slot_key))
    assert classes[slot] == slot_key // INFO.label_divisor
    assert is_thing[slot] == INFO.classes[classes[slot]].is_thing
    reconstructed[pixels] = slot_key
  assert not is_thing[~valid].any()
  np.testing.assert_array_equal(reconstructed, np.where(has_mask, key, -1))


def test_eval_batches_reconstruct_the_labels(data_dir):
  ds = build_dataset_from_flat(convert.file_pattern(data_dir, "val"), INFO,
                               is_training=False, batch_size=2, crop_size=(128, 128),
                               max_num_masks=16)
  spec = ds.element_spec
  assert spec[common.IMAGE].shape == (2, 128, 128, 3)
  assert spec[common.GT_MASK_ID].shape == (2, 128, 128)
  assert spec[common.GT_CLASSES].shape == (2, 16)
  assert spec[common.GT_PANOPTIC_ORIGINAL].shape == (2, 128, 128)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == 3  # 5 images, the last batch padded.
  names = [n for b in batches for n in b[common.IMAGE_NAME]]
  assert names == [f"shapes_val_{i:06d}.png".encode() for i in range(5)] + [b""]
  for batch in batches:
    for i, name in enumerate(batch[common.IMAGE_NAME]):
      if not name:  # The padding example.
        assert batch[common.ORIGINAL_HEIGHT][i] == 0
        assert (batch[common.GT_MASK_ID][i] == -1).all()
        assert (batch[common.GT_CLASSES][i] == -1).all()
        assert (batch[common.GT_SEMANTIC_WEIGHT][i] == 0).all()
        assert (batch[common.IMAGE][i] == 0).all()
        continue
      image, panoptic = _original(name)
      np.testing.assert_array_equal(batch[common.IMAGE][i], _normalise(image))
      np.testing.assert_array_equal(batch[common.GT_PANOPTIC][i], panoptic)
      np.testing.assert_array_equal(batch[common.GT_PANOPTIC_ORIGINAL][i], panoptic)
      np.testing.assert_array_equal(batch[common.GT_SEMANTIC][i], panoptic // 256)
      assert (batch[common.GT_SEMANTIC_WEIGHT][i] == 1).all()
      assert batch[common.RESIZED_HEIGHT][i] == 128 and batch[common.RESIZED_WIDTH][i] == 128
      _check_masks(panoptic, batch[common.GT_MASK_ID][i], batch[common.GT_CLASSES][i],
                   batch[common.GT_IS_THING][i])


def test_a_larger_label_divisor_reads_the_same_shards(data_dir):
  # dataset_info.label_divisor = 1000 on shards written at 256: the reader
  # re-encodes, so every label map uses the experiment's divisor.
  info = dataset_info.dataset_info(name="shapes", label_divisor=1000)
  assert info.label_divisor == 1000 and INFO.label_divisor == 256
  ds = build_dataset_from_flat(convert.file_pattern(data_dir, "val"), info,
                               is_training=False, batch_size=5, crop_size=(128, 128),
                               max_num_masks=16)
  batch = next(ds.as_numpy_iterator())
  for i, name in enumerate(batch[common.IMAGE_NAME]):
    _, panoptic = _original(name)
    want = (panoptic // 256) * 1000 + panoptic % 256
    np.testing.assert_array_equal(batch[common.GT_PANOPTIC][i], want)
    np.testing.assert_array_equal(batch[common.GT_PANOPTIC_ORIGINAL][i], want)
    np.testing.assert_array_equal(batch[common.GT_SEMANTIC][i], panoptic // 256)
  with pytest.raises(ValueError, match="below dataset 'shapes'"):
    dataset_info.dataset_info(name="shapes", label_divisor=100)


def test_eval_shrinks_large_images_and_pads(data_dir):
  ds = build_dataset_from_flat(convert.file_pattern(data_dir, "val"), INFO,
                               is_training=False, batch_size=1, crop_size=(64, 80),
                               max_num_masks=16, max_original_size=(130, 128))
  batch = next(ds.as_numpy_iterator())
  image, panoptic = _original(batch[common.IMAGE_NAME][0])
  assert batch[common.RESIZED_HEIGHT][0] == 64 and batch[common.RESIZED_WIDTH][0] == 64
  np.testing.assert_array_equal(batch[common.GT_PANOPTIC][0][:, 64:], VOID)
  np.testing.assert_array_equal(batch[common.IMAGE][0][:, 64:], 0.0)
  # Nearest-neighbour halving of a 128 label picks one pixel of every 2x2 block.
  label = batch[common.GT_PANOPTIC][0][:, :64]
  assert any(np.array_equal(label, panoptic[dy::2, dx::2]) for dy in (0, 1) for dx in (0, 1))
  original = batch[common.GT_PANOPTIC_ORIGINAL][0]
  assert original.shape == (130, 128)
  np.testing.assert_array_equal(original[:128], panoptic)
  np.testing.assert_array_equal(original[128:], VOID)


def test_eval_original_larger_than_max_is_a_clear_error(data_dir):
  ds = build_dataset_from_flat(convert.file_pattern(data_dir, "val"), INFO,
                               is_training=False, batch_size=1, crop_size=(64, 64))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="shapes_val_000000.png.*largest original size"):
    next(iter(ds))


def _train_batch(data_dir, seed=SEED, **kwargs):
  args = dict(is_training=True, batch_size=3, crop_size=(64, 96), max_num_masks=16,
              min_scale=1.0, max_scale=1.0, flip_probability=1.0, seed=seed)
  args.update(kwargs)
  ds = build_dataset_from_flat(convert.file_pattern(data_dir, "train"), INFO, **args)
  return next(ds.as_numpy_iterator())


def test_train_crop_and_flip_are_consistent(data_dir):
  batch = _train_batch(data_dir)
  assert batch[common.IMAGE].shape == (3, 64, 96, 3)
  for i, name in enumerate(batch[common.IMAGE_NAME]):
    image, panoptic = _original(name)
    flipped_image, flipped_label = _normalise(image[:, ::-1]), panoptic[:, ::-1]
    label = batch[common.GT_PANOPTIC][i]
    matches = [(y, x) for y in range(128 - 64 + 1) for x in range(128 - 96 + 1)
               if np.array_equal(flipped_label[y:y + 64, x:x + 96], label)
               and np.array_equal(flipped_image[y:y + 64, x:x + 96], batch[common.IMAGE][i])]
    assert matches, name
    assert batch[common.RESIZED_HEIGHT][i] == 64 and batch[common.RESIZED_WIDTH][i] == 96
    # Targets follow the cropped label (masks cut by the crop included).
    _check_masks(label, batch[common.GT_MASK_ID][i], batch[common.GT_CLASSES][i],
                 batch[common.GT_IS_THING][i])


def test_train_pads_small_images(data_dir):
  batch = _train_batch(data_dir, crop_size=(160, 144), flip_probability=0.0)
  for i, name in enumerate(batch[common.IMAGE_NAME]):
    image, panoptic = _original(name)
    np.testing.assert_array_equal(batch[common.GT_PANOPTIC][i][:128, :128], panoptic)
    np.testing.assert_array_equal(batch[common.IMAGE][i][:128, :128], _normalise(image))
    assert (batch[common.GT_PANOPTIC][i][128:] == VOID).all()
    assert (batch[common.GT_PANOPTIC][i][:, 128:] == VOID).all()
    assert (batch[common.IMAGE][i][:, 128:] == 0).all()
    assert (batch[common.GT_SEMANTIC][i][128:] == INFO.ignore_label).all()
    assert (batch[common.GT_SEMANTIC_WEIGHT][i][:, 128:] == 0).all()
    assert (batch[common.GT_MASK_ID][i][128:] == -1).all()
    assert batch[common.RESIZED_HEIGHT][i] == 128 and batch[common.RESIZED_WIDTH][i] == 128


def test_train_random_scale_uses_the_steps(data_dir):
  batch = _train_batch(data_dir, crop_size=(256, 256), min_scale=0.5, max_scale=1.5,
                       scale_step=0.25, flip_probability=0.5, batch_size=6)
  sizes = set(batch[common.RESIZED_HEIGHT].tolist()) | set(batch[common.RESIZED_WIDTH].tolist())
  assert sizes <= {64, 96, 128, 160, 192}
  for i in range(6):
    size = batch[common.RESIZED_HEIGHT][i]
    assert (batch[common.GT_PANOPTIC][i][size:] == VOID).all()
    assert (batch[common.GT_PANOPTIC][i][:size, :size] != VOID).all()


def test_train_is_deterministic_when_seeded(data_dir):
  kwargs = dict(min_scale=0.5, max_scale=2.0, scale_step=0.1, flip_probability=0.5)
  a = _train_batch(data_dir, seed=1, **kwargs)
  b = _train_batch(data_dir, seed=1, **kwargs)
  c = _train_batch(data_dir, seed=2, **kwargs)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a[common.IMAGE], c[common.IMAGE])


def test_mask_overflow_keeps_the_largest():
  d = INFO.label_divisor
  panoptic = np.full((10, 10), 3 * d, np.int32)     # sky: 100 - the rest
  panoptic[0, :] = 3 * d + 7                         # stuff instance ids merge into sky
  panoptic[5:, :] = 4 * d                            # ground: 40 pixels
  panoptic[1:4, 0:6] = 0 * d + 1                     # circle 1: 18 pixels
  panoptic[1:3, 6:9] = 1 * d + 2                     # square 2: 6 pixels
  panoptic[3, 6:8] = 2 * d + 3                       # triangle 3: 2 pixels
  panoptic[4, 0:3] = 0 * d + 0                       # crowd circle: 3 pixels
  panoptic[4, 3:5] = VOID                            # void: 2 pixels
  targets = preprocessing.panoptic_to_targets(
      tf.constant(panoptic), d, INFO.ignore_label, INFO.is_thing, max_num_masks=3)
  mask_id = targets[common.GT_MASK_ID].numpy()
  classes = targets[common.GT_CLASSES].numpy()
  # numpy: areas of the masks, largest three kept, slots in panoptic-id order.
  semantic = panoptic // d
  key = np.where(np.isin(semantic, INFO.thing_ids), panoptic, semantic * d)
  has_mask = (semantic != INFO.ignore_label) & ~((panoptic % d == 0) & (semantic < 3))
  ids, areas = np.unique(key[has_mask], return_counts=True)
  kept = sorted(ids[np.argsort(-areas, kind="stable")[:3]].tolist())
  assert kept == [0 * d + 1, 3 * d, 4 * d]
  np.testing.assert_array_equal(classes, [k // d for k in kept])
  np.testing.assert_array_equal(targets[common.GT_IS_THING].numpy(), [True, False, False])
  expected = np.full((10, 10), -1)
  for slot, k in enumerate(kept):
    expected[has_mask & (key == k)] = slot
  np.testing.assert_array_equal(mask_id, expected)
  # Dropped masks and crowd keep their class; only void is ignored.
  semantic_target = targets[common.GT_SEMANTIC].numpy()
  np.testing.assert_array_equal(semantic_target,
                                np.where(semantic == INFO.ignore_label, INFO.ignore_label,
                                         semantic))
  np.testing.assert_array_equal(targets[common.GT_SEMANTIC_WEIGHT].numpy(),
                                (semantic != INFO.ignore_label).astype(np.float32))



def test_all_stuff_gives_one_mask_per_class():
  """dataset_info(all_stuff=True): semantic-training targets, one mask per class."""
  info = dataset_info.dataset_info(name="shapes", all_stuff=True)
  assert [c.name for c in info.classes] == [c.name for c in INFO.classes]
  assert not any(info.is_thing) and any(INFO.is_thing)
  d = INFO.label_divisor
  panoptic = np.full((6, 6), 3 * d, np.int32)        # sky
  panoptic[0:2, 0:2] = 0 * d + 1                     # circle 1
  panoptic[3:5, 3:5] = 0 * d + 2                     # circle 2
  panoptic[5, 0:2] = 0 * d + 0                       # crowd circle
  panoptic[5, 5] = VOID
  targets = preprocessing.panoptic_to_targets(
      tf.constant(panoptic), d, info.ignore_label, info.is_thing, max_num_masks=4)
  # By hand: slot 0 = every circle pixel (both instances and the crowd), slot 1
  # = sky; void in none. The panoptic description keeps two circle masks and
  # leaves the crowd out.
  expected = np.where(panoptic // d == 0, 0, 1)
  expected[5, 5] = -1
  np.testing.assert_array_equal(targets[common.GT_MASK_ID].numpy(), expected)
  np.testing.assert_array_equal(targets[common.GT_CLASSES].numpy(), [0, 3, -1, -1])
  assert not targets[common.GT_IS_THING].numpy().any()
  assert not targets[common.GT_CROWD].numpy().any()
  panoptic_targets = preprocessing.panoptic_to_targets(
      tf.constant(panoptic), d, INFO.ignore_label, INFO.is_thing, max_num_masks=4)
  np.testing.assert_array_equal(panoptic_targets[common.GT_CLASSES].numpy(), [0, 0, 3, -1])

def test_corrupt_record_names_image_and_file(tmp_path):
  image, panoptic = shapes.generate_example(0, 0)
  example = tfrecord.make_example(tfrecord.encode_png(image), "png", "bad_image.png",
                                  128, 128, panoptic, 256, 255)
  example.features.feature[tfrecord.PANOPTIC_ENCODED].bytes_list.value[0] = b"not a png"
  path = str(tmp_path / "val-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(example.SerializeToString())
  ds = build_dataset_from_flat(path, INFO, is_training=False, batch_size=1,
                               crop_size=(128, 128))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"bad_image.png.*val-00000-of-00001.tfrecord.*not a PNG"):
    next(iter(ds))


def test_damaged_file_is_named_by_verify(data_dir, tmp_path):
  source = os.path.join(data_dir, "val-00000-of-00002.tfrecord")
  data = bytearray(open(source, "rb").read())
  data[len(data) // 2] ^= 0xFF
  path = str(tmp_path / "damaged.tfrecord")
  with open(path, "wb") as f:
    f.write(bytes(data))
  with pytest.raises(ValueError, match=r"Corrupt TFRecord file .*damaged.tfrecord"):
    reader.verify_tfrecords(path)
  with pytest.raises(ValueError, match=r"damaged.tfrecord"):
    build_dataset_from_flat(path, INFO, is_training=False, batch_size=1,
                            crop_size=(128, 128), verify_records=True)
  assert reader.verify_tfrecords(source) == 2


def test_no_matching_file(tmp_path):
  with pytest.raises(ValueError, match="no file matches"):
    build_dataset_from_flat(str(tmp_path / "nothing-*"), INFO, is_training=True,
                            batch_size=1, crop_size=(8, 8))
