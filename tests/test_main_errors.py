"""Bad command lines end with one clear line and a non-zero exit status."""

import os

from tests.conftest import run_main

QUICKSTART = "experiments/quickstart/kmax_deeplab_shapes.gin"


def _last_line(proc):
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  return lines[-1] if lines else ""


def test_missing_gin_file(tmp_path):
  proc = run_main("--gin_file=experiments/nope.gin", "--mode=train",
                  f"--model_dir={tmp_path}")
  assert proc.returncode != 0
  assert _last_line(proc) == "error: gin file not found: experiments/nope.gin"
  assert "Traceback" not in proc.stderr


def test_unknown_gin_binding(tmp_path):
  proc = run_main(f"--gin_file={QUICKSTART}", "--gin_param=MaskTransformerr.output_stride=4",
                  "--mode=summary")
  assert proc.returncode != 0
  line = _last_line(proc)
  assert line.startswith("error: bad gin configuration:"), proc.stderr[-2000:]
  assert "MaskTransformerr" in line
  assert "Traceback" not in proc.stderr


def test_typo_in_mode(tmp_path):
  proc = run_main(f"--gin_file={QUICKSTART}", "--mode=trian", f"--model_dir={tmp_path}")
  assert proc.returncode != 0
  line = _last_line(proc)
  assert line.startswith("error: unknown --mode='trian'")
  assert "train_and_eval" in line


def test_unwritable_model_dir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  model_dir = os.path.join(str(blocker), "run")
  proc = run_main(f"--gin_file={QUICKSTART}", "--mode=train", f"--model_dir={model_dir}")
  assert proc.returncode != 0
  line = _last_line(proc)
  assert line.startswith(f"error: model_dir {model_dir!r} is not writable"), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
