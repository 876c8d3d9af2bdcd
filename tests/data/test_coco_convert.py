"""COCO panoptic format: convert -> inspect round trip, and bad inputs."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from deeplab_panoptic.data import convert
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.data import inspect as inspect_lib
from deeplab_panoptic.data import tfrecord

from tests.conftest import COCO_SAMPLE_DIR as SAMPLE
from tests.conftest import REPO_ROOT


def _ids(path):
  rgb = np.asarray(Image.open(path).convert("RGB"), np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _segments(panoptic_json, panoptic_dir):
  """{image file name: sorted [(category, iscrowd, pixel indices bytes)]}, plus void."""
  with open(panoptic_json, encoding="utf-8") as f:
    data = json.load(f)
  names = {im["id"]: im["file_name"] for im in data["images"]}
  result = {}
  for ann in data["annotations"]:
    ids = _ids(os.path.join(panoptic_dir, ann["file_name"]))
    segs = []
    for seg in ann["segments_info"]:
      mask = ids == seg["id"]
      assert mask.sum() == seg["area"]
      segs.append((seg["category_id"], seg["iscrowd"], np.flatnonzero(mask).tobytes()))
    result[names[ann["image_id"]]] = (sorted(segs), np.flatnonzero(ids == 0).tobytes())
  return result


def test_real_coco_sample_round_trip(tmp_path):
  out = str(tmp_path / "records")
  rc = convert.run_args([
      "convert", "--dataset=coco", f"--output_dir={out}", "--num_shards=2",
      "--num_workers=1", "--split=val",
      f"--panoptic_json={SAMPLE}/panoptic_examples.json",
      f"--panoptic_dir={SAMPLE}/panoptic_examples",
      f"--image_dir={SAMPLE}/input_images"])
  assert rc == 0
  with open(os.path.join(out, convert.SUMMARY_FILE), encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["splits"]["val"]["images"] == 2
  assert sum(summary["splits"]["val"]["crowd_segments"]) == 3
  inspected = str(tmp_path / "inspect")
  result = inspect_lib.inspect(convert.file_pattern(out, "val"), inspected)
  original = _segments(f"{SAMPLE}/panoptic_examples.json", f"{SAMPLE}/panoptic_examples")
  back = _segments(os.path.join(inspected, inspect_lib.PANOPTIC_JSON),
                   os.path.join(inspected, inspect_lib.PANOPTIC_DIR))
  assert sorted(original) == sorted(back) == ["000000142238.jpg", "000000439180.jpg"]
  for name in original:
    assert back[name] == original[name], name
  # Named after the source images, with COCO's image ids and categories.
  assert sorted(im["id"] for im in result["images"]) == [142238, 439180]
  assert sorted(os.listdir(os.path.join(inspected, "panoptic"))) == [
      "000000142238.png", "000000439180.png"]
  assert sorted(os.listdir(os.path.join(inspected, "overlays"))) == [
      "000000142238.png", "000000439180.png"]
  with open(f"{SAMPLE}/panoptic_coco_categories.json", encoding="utf-8") as f:
    categories = json.load(f)
  assert [(c["id"], c["name"], c["isthing"]) for c in result["categories"]] == [
      (c["id"], c["name"], c["isthing"]) for c in categories]
  # Images are stored byte for byte.
  record = next(tfrecord.read_examples([os.path.join(out, "val-00000-of-00002.tfrecord")]))
  stored = record[1].features.feature[tfrecord.IMAGE_ENCODED].bytes_list.value[0]
  assert stored == open(f"{SAMPLE}/input_images/000000142238.jpg", "rb").read()


def test_coco_format_reads_its_own_categories(tmp_path):
  out = str(tmp_path / "records")
  rc = convert.run_args([
      "convert", "--dataset=coco_format", "--dataset_name=mine", f"--output_dir={out}",
      "--num_shards=1", "--num_workers=1", "--split=val",
      f"--categories_json={SAMPLE}/panoptic_coco_categories.json",
      f"--panoptic_json={SAMPLE}/panoptic_examples.json",
      f"--panoptic_dir={SAMPLE}/panoptic_examples",
      f"--image_dir={SAMPLE}/input_images"])
  assert rc == 0
  info = dataset_info.dataset_info(
      name="mine", categories_json=os.path.join(out, convert.DATASET_INFO_FILE))
  assert info.num_classes == 133 and len(info.thing_ids) == 80
  assert info.label_divisor == 256 and info.ignore_label == 255


# ----------------------------------------------------------------------------
# A tiny synthetic dataset in COCO panoptic format, and its bad variants.
# ----------------------------------------------------------------------------
CATEGORIES = [{"id": 7, "name": "cat", "isthing": 1, "color": [200, 0, 0]},
              {"id": 9, "name": "grass", "isthing": 0, "color": [0, 200, 0]}]


def _png_bytes(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def _make_dataset(root):
  """Two 24x32 images; the second has a crowd cat and void."""
  os.makedirs(os.path.join(root, "images"))
  os.makedirs(os.path.join(root, "panoptic"))
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for i in range(2):
    name = f"img{i}"
    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(image).save(os.path.join(root, "images", name + ".jpg"), quality=90)
    ids = np.full((24, 32), 1000, np.int64)            # grass
    ids[2:10, 2:12] = 2000 + i                         # cat 1
    ids[12:20, 15:30] = 3000                           # cat 2 (crowd in image 1)
    if i == 1:
      ids[0, :] = 0                                    # void
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(root, "panoptic", name + ".png"))
    images.append({"id": i, "file_name": name + ".jpg", "height": 24, "width": 32})
    annotations.append({"image_id": i, "file_name": name + ".png", "segments_info": [
        {"id": 1000, "category_id": 9, "iscrowd": 0},
        {"id": 2000 + i, "category_id": 7, "iscrowd": 0},
        {"id": 3000, "category_id": 7, "iscrowd": int(i == 1)}]})
  data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
  with open(os.path.join(root, "panoptic.json"), "w", encoding="utf-8") as f:
    json.dump(data, f)
  return data


def _args(root, out):
  return ["convert", "--dataset=coco_format", f"--output_dir={out}", "--num_shards=1",
          "--num_workers=1", "--split=train",
          f"--panoptic_json={root}/panoptic.json", f"--panoptic_dir={root}/panoptic",
          f"--image_dir={root}/images"]


def _rewrite_json(root, change):
  path = os.path.join(root, "panoptic.json")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  change(data)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f)


def _truncate(path):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _resize_png(path):
  Image.open(path).resize((30, 24), Image.NEAREST).save(path)


def _paint_png(path, value):
  rgb = np.asarray(Image.open(path).convert("RGB")).copy()
  rgb[22:24, 0:4] = [value % 256, value // 256 % 256, value // 65536]
  Image.fromarray(rgb).save(path)


def _drop_segment(data):
  data["annotations"][1]["segments_info"].pop(1)  # 2001 stays in the PNG


def _add_segment(data):
  data["annotations"][1]["segments_info"].append(
      {"id": 4242, "category_id": 9, "iscrowd": 0})


def _unknown_category(data):
  data["annotations"][1]["segments_info"][0]["category_id"] = 99


BAD_INPUTS = {
    # case: (how to break the dataset, text the error must hold)
    "truncated_jpeg": (lambda r: _truncate(f"{r}/images/img1.jpg"), r"img1\.jpg"),
    "unreadable_jpeg": (lambda r: open(f"{r}/images/img1.jpg", "wb").write(b"junk"),
                        r"img1\.jpg.*unreadable"),
    "truncated_png": (lambda r: _truncate(f"{r}/panoptic/img1.png"), r"img1\.png"),
    "missing_image": (lambda r: os.remove(f"{r}/images/img1.jpg"),
                      r"img1\.jpg: file not found"),
    "segment_absent_from_png": (lambda r: _add_segment_json(r),
                                r"img1\.png: segment 4242 .*absent from the PNG"),
    "png_id_absent_from_json": (lambda r: _rewrite_json(r, _drop_segment),
                                r"img1\.png: the PNG holds segment id 2001"),
    "png_id_absent_from_json_painted": (lambda r: _paint_png(f"{r}/panoptic/img1.png", 77),
                                        r"img1\.png: the PNG holds segment id 77"),
    "unknown_category": (lambda r: _rewrite_json(r, _unknown_category),
                         r"panoptic\.json: annotation of img1\.png: segment 1000 has the "
                         r"unknown category id 99"),
    "different_sizes": (lambda r: _resize_png(f"{r}/panoptic/img1.png"),
                        r"img1\.png: the label is 24x30 but its image .*img1\.jpg is 24x32"),
    "empty_annotations": (lambda r: _rewrite_json(r, lambda d: d.update(annotations=[])),
                          r"panoptic\.json: the 'annotations' list is missing or empty"),
}


def _add_segment_json(root):
  _rewrite_json(root, _add_segment)


def test_tiny_coco_format_converts(tmp_path):
  root = str(tmp_path / "data")
  _make_dataset(root)
  out = str(tmp_path / "out")
  assert convert.run_args(_args(root, out)) == 0
  labels = [tfrecord.decode_panoptic_png(
      ex.features.feature[tfrecord.PANOPTIC_ENCODED].bytes_list.value[0])
            for _, ex in tfrecord.read_examples([f"{out}/train-00000-of-00001.tfrecord"])]
  # Train ids follow the JSON's category order: cat 0, grass 1.
  expected = np.full((24, 32), 1 * 256)
  expected[2:10, 2:12] = 0 * 256 + 1
  expected[12:20, 15:30] = 0 * 256 + 2
  np.testing.assert_array_equal(labels[0], expected)
  expected[12:20, 15:30] = 0  # crowd: instance 0
  expected[0, :] = 255 * 256  # void
  np.testing.assert_array_equal(labels[1], expected)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_nothing_is_written(tmp_path, capsys, case):
  root = str(tmp_path / "data")
  _make_dataset(root)
  BAD_INPUTS[case][0](root)
  out = str(tmp_path / "out")
  assert convert.run_args(_args(root, out)) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("convert: error:") and len(err.splitlines()) == 1, err
  assert __import__("re").search(BAD_INPUTS[case][1], err), err
  assert not os.path.exists(out) or os.listdir(out) == []


def test_bad_input_exit_status_from_the_command_line(tmp_path):
  root = str(tmp_path / "data")
  _make_dataset(root)
  _truncate(f"{root}/panoptic/img0.png")
  out = str(tmp_path / "out")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-m", "deeplab_panoptic.data.convert",
                           *_args(root, out)[1:], "--num_shards=2", "--num_workers=2"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 1
  assert "img0.png" in result.stderr and "Traceback" not in result.stderr
  assert [f for f in os.listdir(out) if not f.startswith("train-00001")] == []


def test_corrected_rerun_is_not_refused(tmp_path):
  root = str(tmp_path / "data")
  _make_dataset(root)
  shutil.copy(f"{root}/images/img1.jpg", f"{tmp_path}/good.jpg")
  _truncate(f"{root}/images/img1.jpg")
  out = str(tmp_path / "out")
  assert convert.run_args(_args(root, out)) == 1
  shutil.copy(f"{tmp_path}/good.jpg", f"{root}/images/img1.jpg")
  assert convert.run_args(_args(root, out)) == 0
  assert sorted(os.listdir(out)) == sorted([
      "train-00000-of-00001.tfrecord", convert.SUMMARY_FILE, convert.CONFIG_FILE,
      convert.DATASET_INFO_FILE])


def test_ade20k_checks_the_class_counts(tmp_path, capsys):
  root = str(tmp_path / "data")
  _make_dataset(root)
  args = _args(root, str(tmp_path / "out"))
  args[1] = "--dataset=ade20k"
  assert convert.run_args(args) == 1
  assert "dataset 'ade20k' has 150 classes, the file lists 2" in capsys.readouterr().err
  categories = [{"id": i + 1, "name": f"c{i}", "isthing": int(i < 100)}
                for i in range(150)]
  info = dataset_info.from_spec("ade20k", categories, "test")
  assert (info.num_classes, len(info.thing_ids), info.label_divisor) == (150, 100, 1000)


def test_inspect_cli_and_missing_records(tmp_path):
  root = str(tmp_path / "data")
  _make_dataset(root)
  out = str(tmp_path / "out")
  assert convert.run_args(_args(root, out)) == 0
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "deeplab_panoptic.data.inspect",
       f"--tfrecord={out}/train-*.tfrecord", f"--output_dir={tmp_path}/inspect"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  with open(f"{tmp_path}/inspect/panoptic.json", encoding="utf-8") as f:
    data = json.load(f)
  assert [im["file_name"] for im in data["images"]] == ["img0.jpg", "img1.jpg"]
  crowd = [(s["category_id"], s["iscrowd"]) for s in data["annotations"][1]["segments_info"]]
  assert sorted(crowd) == [(7, 0), (7, 1), (9, 0)]
  with pytest.raises(ValueError, match="no file matches"):
    inspect_lib.inspect(f"{tmp_path}/nothing-*", f"{tmp_path}/x")
