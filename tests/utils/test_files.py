"""The atomic writer: whole file or old file, never half; no temporary left behind."""

import json
import os
import stat

import pytest

from deeplab_panoptic.utils import files


def test_writes_text_json_and_bytes(tmp_path):
  files.write_text_atomic(str(tmp_path / "a" / "b.txt"), "héllo")
  assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo"
  files.write_json_atomic(str(tmp_path / "c.json"), {"x": [1, 2]})
  assert (tmp_path / "c.json").read_text() == json.dumps({"x": [1, 2]}, indent=2) + "\n"
  files.write_json_atomic(str(tmp_path / "d.json"), {"x": 1}, indent=None)
  assert (tmp_path / "d.json").read_text() == '{"x": 1}\n'
  files.write_bytes_atomic(str(tmp_path / "e.bin"), b"\x00\xff")
  assert (tmp_path / "e.bin").read_bytes() == b"\x00\xff"
  assert sorted(os.listdir(tmp_path)) == ["a", "c.json", "d.json", "e.bin"]


def test_new_files_get_ordinary_permissions(tmp_path):
  umask = os.umask(0o022)
  try:
    files.write_text_atomic(str(tmp_path / "f.txt"), "x")
  finally:
    os.umask(umask)
  # mkstemp alone would leave 0600.
  assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == 0o644


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "g.txt"
  path.write_text("old")
  with pytest.raises(RuntimeError, match="boom"):
    with files.atomic_output(str(path)) as tmp:
      assert os.path.dirname(tmp) == str(tmp_path)
      assert os.path.basename(tmp).startswith(files.temporary_prefix(str(path)))
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("boom")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["g.txt"]
  with pytest.raises(TypeError):
    files.write_json_atomic(str(path), {"bad": object()})
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["g.txt"]
