"""The COCO panoptic codec against independent numpy / Pillow computations."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from deeplab_panoptic.data import coco_panoptic

DIV, IGNORE = 10, 9
IS_THING = [True, False, True]            # train ids 0 (thing), 1 (stuff), 2 (thing)
DATASET_IDS = {0: 7, 1: 30, 2: 5}


def _label_map():
  pan = np.full((6, 8), 1 * DIV + 0)      # stuff, instance 0
  pan[0, :] = 1 * DIV + 4                 # the same stuff class, another instance id
  pan[1:3, 1:4] = 0 * DIV + 1             # thing 0, instance 1
  pan[3:5, 5:8] = 0 * DIV + 0             # thing 0 crowd
  pan[4:6, 0:2] = 2 * DIV + 3             # thing 2, instance 3
  pan[5, 6:8] = IGNORE * DIV              # void
  return pan


def test_id_png_round_trip_matches_the_packing(tmp_path):
  ids = np.random.default_rng(0).integers(0, 2 ** 24, (5, 7))
  rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
  np.testing.assert_array_equal(coco_panoptic.id_to_rgb(ids), rgb)
  np.testing.assert_array_equal(coco_panoptic.rgb_to_id(rgb), ids)
  path = str(tmp_path / "a" / "ids.png")
  coco_panoptic.write_id_png(path, ids)
  np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), rgb)
  np.testing.assert_array_equal(coco_panoptic.read_id_png(path), ids)
  np.testing.assert_array_equal(coco_panoptic.decode_id_png(coco_panoptic.encode_id_png(ids)),
                                ids)
  assert os.listdir(tmp_path / "a") == ["ids.png"]


def test_palette_png_reads_its_colours_and_bad_files_are_named(tmp_path):
  rgb = np.zeros((2, 3, 3), np.uint8)
  rgb[0, 1] = (1, 2, 3)
  Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
  assert coco_panoptic.read_id_png(str(tmp_path / "p.png"))[0, 1] == 1 + 2 * 256 + 3 * 65536
  Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
  with pytest.raises(coco_panoptic.FormatError, match=r"grey\.png: .*must be RGB"):
    coco_panoptic.read_id_png(str(tmp_path / "grey.png"))
  Image.fromarray(rgb).save(tmp_path / "photo.png", format="JPEG")
  with pytest.raises(coco_panoptic.FormatError, match=r"photo\.png: not a PNG"):
    coco_panoptic.read_id_png(str(tmp_path / "photo.png"))
  with pytest.raises(coco_panoptic.FormatError, match=r"missing\.png: file not found"):
    coco_panoptic.read_id_png(str(tmp_path / "missing.png"))
  with pytest.raises(coco_panoptic.FormatError, match="here: unreadable"):
    coco_panoptic.decode_id_png(b"junk", "here")


def _expected_segments(pan, merge_stuff):
  """numpy: (canonical label, pixels) per segment, in label order."""
  cls = pan // DIV
  key = pan.copy()
  if merge_stuff:
    key = np.where(np.isin(cls, [1]), cls * DIV, pan)
  return [(int(v), key == v) for v in np.unique(key) if v // DIV != IGNORE]


@pytest.mark.parametrize("ground_truth", [False, True])
def test_panoptic_to_coco_segments(ground_truth):
  pan = _label_map()
  ids, segments = coco_panoptic.panoptic_to_coco(
      pan, DIV, IGNORE, DATASET_IDS, is_thing=IS_THING if ground_truth else None)
  expected = _expected_segments(pan, merge_stuff=ground_truth)
  assert len(segments) == len(expected) == (4 if ground_truth else 5)
  np.testing.assert_array_equal(ids == 0, pan // DIV == IGNORE)
  for number, (segment, (label, mask)) in enumerate(zip(segments, expected), start=1):
    assert segment["id"] == number
    np.testing.assert_array_equal(ids == number, mask)
    ys, xs = np.nonzero(mask)
    assert segment == {
        "id": number, "category_id": DATASET_IDS[label // DIV],
        "iscrowd": int(ground_truth and IS_THING[label // DIV] and label % DIV == 0),
        "area": int(mask.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]}


def test_chosen_segment_ids_and_the_way_back():
  pan = _label_map()
  ids, segments = coco_panoptic.panoptic_to_coco(
      pan, DIV, IGNORE, DATASET_IDS, is_thing=IS_THING,
      segment_ids=lambda labels, categories: labels * 1000 + categories)
  # Canonical labels 0 (crowd), 1, 10 (both stuff instances), 23.
  assert [s["id"] for s in segments] == [0 * 1000 + 7, 1 * 1000 + 7, 10 * 1000 + 30,
                                         23 * 1000 + 5]
  train_ids = {v: k for k, v in DATASET_IDS.items()}
  back = coco_panoptic.coco_to_panoptic(ids, segments, train_ids, IS_THING, DIV, IGNORE)
  want = pan.copy()
  want[0, :] = 1 * DIV                     # stuff instances merged
  want[4:6, 0:2] = 2 * DIV + 1             # things renumbered from 1 per class
  np.testing.assert_array_equal(back, want)
  with pytest.raises(coco_panoptic.FormatError, match="x.png: the PNG holds segment id"):
    coco_panoptic.coco_to_panoptic(ids, segments[1:], train_ids, IS_THING, DIV, IGNORE,
                                   where="x.png")
  with pytest.raises(coco_panoptic.FormatError, match="segment 99 of the JSON is absent"):
    coco_panoptic.coco_to_panoptic(ids, segments + [{"id": 99, "category_id": 7}],
                                   train_ids, IS_THING, DIV, IGNORE)
  with pytest.raises(ValueError, match="label 42 has class 4, outside"):
    coco_panoptic.panoptic_to_coco(np.full((2, 2), 42), DIV, IGNORE, DATASET_IDS,
                                   is_thing=IS_THING)


def test_writer_writes_images_annotations_and_categories(tmp_path):
  categories = [{"id": 7, "name": "a", "isthing": 1}]
  writer = coco_panoptic.CocoPanopticWriter(str(tmp_path), DATASET_IDS, DIV, IGNORE,
                                            categories=categories)
  annotation = writer.add("000000000042.jpg", _label_map())
  annotation["segments_info"][0]["score"] = 0.5
  with pytest.raises(ValueError, match="both map to"):
    writer.add("000000000042.png", _label_map())
  with open(writer.close(), encoding="utf-8") as f:
    data = json.load(f)
  assert data["images"] == [{"id": 42, "file_name": "000000000042.jpg", "height": 6,
                             "width": 8}]
  assert data["annotations"][0]["file_name"] == "000000000042.png"
  assert data["annotations"][0]["segments_info"][0]["score"] == 0.5
  assert data["categories"] == categories
  ids = coco_panoptic.read_id_png(str(tmp_path / "panoptic" / "000000000042.png"))
  assert sorted(np.unique(ids)) == [0, 1, 2, 3, 4, 5]
