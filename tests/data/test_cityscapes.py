"""Cityscapes gtFine conversion on a tiny synthetic tree."""

import os

import numpy as np
from PIL import Image

from deeplab_panoptic.data import convert
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import inspect as inspect_lib
from deeplab_panoptic.data import tfrecord


def _write_tree(root, split="val"):
  """One image: road, sky, two cars, a car group (crowd), ego vehicle (void)."""
  city = "testcity"
  os.makedirs(os.path.join(root, "leftImg8bit", split, city))
  os.makedirs(os.path.join(root, "gtFine", split, city))
  stem = f"{city}_000000_000019"
  image = np.random.default_rng(1).integers(0, 255, (16, 32, 3), dtype=np.uint8)
  Image.fromarray(image).save(
      os.path.join(root, "leftImg8bit", split, city, stem + "_leftImg8bit.png"))
  ids = np.full((16, 32), 7, np.uint16)        # road (label id 7, train id 0)
  ids[:4] = 23                                  # sky (train id 10)
  ids[5:8, 2:8] = 26000                         # car, Cityscapes instance 0
  ids[5:8, 10:14] = 26001                       # car, instance 1
  ids[9:12, 2:8] = 26                           # car group -> crowd
  ids[14:, :] = 1                               # ego vehicle -> void
  Image.fromarray(ids).save(
      os.path.join(root, "gtFine", split, city, stem + "_gtFine_instanceIds.png"))
  return image


def test_cityscapes_description_comes_from_cityscapesscripts():
  info = dataset_info.dataset_info(name="cityscapes")
  assert info.num_classes == 19 and len(info.thing_ids) == 8
  assert info.class_names[0] == "road" and info.class_names[13] == "car"
  assert info.classes[13].dataset_id == 26 and info.label_divisor == 1000


def test_cityscapes_converts_and_inspects(tmp_path):
  root = str(tmp_path / "cityscapes")
  image = _write_tree(root)
  out = str(tmp_path / "out")
  assert convert.run_args(["convert", "--dataset=cityscapes", f"--cityscapes_root={root}",
                           "--split=val", f"--output_dir={out}", "--num_shards=1",
                           "--num_workers=1"]) == 0
  (_, example), = list(tfrecord.read_examples([f"{out}/val-00000-of-00001.tfrecord"]))
  label = tfrecord.decode_panoptic_png(
      example.features.feature[tfrecord.PANOPTIC_ENCODED].bytes_list.value[0])
  expected = np.full((16, 32), 0)
  expected[:4] = 10 * 1000
  expected[5:8, 2:8] = 13 * 1000 + 1
  expected[5:8, 10:14] = 13 * 1000 + 2
  expected[9:12, 2:8] = 13 * 1000            # crowd
  expected[14:] = 255 * 1000                 # void
  np.testing.assert_array_equal(label, expected)
  name = example.features.feature[tfrecord.IMAGE_FILENAME].bytes_list.value[0]
  assert name == b"testcity_000000_000019_leftImg8bit.png"
  result = inspect_lib.inspect(f"{out}/val-*.tfrecord", str(tmp_path / "inspect"))
  segments = sorted((s["category_id"], s["iscrowd"], s["area"])
                    for s in result["annotations"][0]["segments_info"])
  assert segments == [(7, 0, 32 * 10 - 18 - 12 - 18), (23, 0, 128), (26, 0, 12),
                      (26, 0, 18), (26, 1, 18)]
  decoded = np.asarray(Image.open(
      str(tmp_path / "inspect" / "overlays" / "testcity_000000_000019_leftImg8bit.png")))
  assert decoded.shape == image.shape


def test_cityscapes_missing_label_is_named(tmp_path, capsys):
  root = str(tmp_path / "cityscapes")
  _write_tree(root)
  label = os.path.join(root, "gtFine", "val", "testcity",
                       "testcity_000000_000019_gtFine_instanceIds.png")
  os.remove(label)
  assert convert.run_args(["convert", "--dataset=cityscapes", f"--cityscapes_root={root}",
                           "--split=val", f"--output_dir={tmp_path}/out",
                           "--num_workers=1"]) == 1
  assert f"{label}: file not found" in capsys.readouterr().err
