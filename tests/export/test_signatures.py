"""Every model family's SavedModel, loaded in a fresh process, equals the in-memory model.

A new family plugs in by adding its gin file to ``FAMILY_GIN_FILES`` in
tests/export/conftest.py, whose session fixture ``exported_families`` builds every family
with its initial weights and lowered thresholds, exports them in one process and
loads and runs them in one other.
"""

import json
import os

import numpy as np
import pytest

from tests.export.conftest import FAMILY_GIN_FILES

_SIGNATURES = ("serving_default", "serve_encoded_images", "serve_tf_example")


def _check_segments(out, name, panoptic, label_divisor):
  """segment_ids / segment_areas agree with the returned panoptic map."""
  ids, areas = out[f"{name}/segment_ids"], out[f"{name}/segment_areas"]
  classes = out[f"{name}/segment_classes"]
  for b in range(panoptic.shape[0]):
    values, counts = np.unique(panoptic[b], return_counts=True)
    count_of = dict(zip(values.tolist(), counts.tolist()))
    for slot in range(ids.shape[1]):
      if ids[b, slot] < 0:
        assert areas[b, slot] == 0
        continue
      assert ids[b, slot] // label_divisor == classes[b, slot]
      assert areas[b, slot] == count_of[ids[b, slot]]
    # Every non-void segment of the map is some slot's segment.
    listed = set(ids[b][ids[b] >= 0].tolist())
    assert {v for v in values.tolist() if v // label_divisor != 255} <= listed


@pytest.mark.slow
@pytest.mark.parametrize("family", range(len(FAMILY_GIN_FILES)),
                         ids=[os.path.basename(f)[:-4] for f in FAMILY_GIN_FILES])
def test_saved_model_signatures_match_in_memory_model(family, exported_families):
  tmp_path = exported_families
  assert (tmp_path / f"export{family}" / "saved_model.pb").exists()
  assert not (tmp_path / f"export{family}.tmp").exists()
  ref = np.load(tmp_path / f"ref{family}.npz", allow_pickle=True)
  out = np.load(tmp_path / f"out{family}.npz")

  info = json.loads(str(out["export_info"]))
  divisor = info["dataset_info"]["label_divisor"]
  ignore = info["dataset_info"]["ignore_label"]
  assert json.loads((tmp_path / f"export{family}" / "assets.extra" / "export_info.json"
                     ).read_text()) == info

  # Not a trivial comparison: the reference maps hold several non-void segments.
  labels = np.unique(ref["ref_same"])
  assert len(labels[labels // divisor != ignore]) > 2, labels

  # uint8 images, batch of two and batch of one.
  np.testing.assert_array_equal(out["serving_default/panoptic"], ref["ref_same"])
  np.testing.assert_array_equal(out["serving_default_single/panoptic"], ref["ref_same"][:1])
  pan = out["serving_default/panoptic"]
  np.testing.assert_array_equal(out["serving_default/semantic"], pan // divisor)
  np.testing.assert_array_equal(out["serving_default/instance"], pan % divisor)
  np.testing.assert_array_equal(out["serving_default/original_height"], [100, 100])
  _check_segments(out, "serving_default", pan, divisor)

  # Encoded files and tf.Examples of mixed sizes: each image's part of the padded
  # batch is its reference map, the rest is void.
  for name in ("serve_encoded_images", "serve_tf_example"):
    pan = out[f"{name}/panoptic"]
    assert pan.shape == (3, 170, 150)
    np.testing.assert_array_equal(out[f"{name}/original_height"], [100, 170, 100])
    np.testing.assert_array_equal(out[f"{name}/original_width"], [150, 90, 150])
    for i in range(3):
      expected = ref[f"ref_mixed{i}"]
      h, w = expected.shape
      np.testing.assert_array_equal(pan[i, :h, :w], expected, err_msg=f"{name} image {i}")
      assert np.all(pan[i, h:] == ignore * divisor) and np.all(pan[i, :, w:] == ignore * divisor)
      assert np.all(out[f"{name}/semantic"][i, h:] == ignore)
    _check_segments(out, name, pan, divisor)

  assert "Unknown image file format" in str(out["garbage_error"]), str(out["garbage_error"])
