"""TFLite export: built-in ops only, and the same maps as the in-memory model."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.export.test_signatures import LOW_THRESHOLDS

# Families whose TFLite conversion needs only TFLite's built-in ops; a family that
# needs the Flex delegate goes to a list run with select_tf_ops=True.
TFLITE_BUILTIN_GIN_FILES = [
    "experiments/quickstart/kmax_deeplab_shapes.gin",
]

_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
import tf_keras
sys.path.insert(0, {repo!r})
from deeplab_panoptic import common, main as main_lib
from deeplab_panoptic.export import saved_model, tflite
from deeplab_panoptic.training import experiment
main_lib.parse_gin([{gin_file!r}], {params!r})
# Fixed initial weights: with some draws an untrained model puts every pixel in one
# or two slots, and the comparison would test nothing.
tf_keras.utils.set_random_seed(0)
exp = experiment.Experiment({model_dir!r}, "export")
module = saved_model.PanopticExportModule(exp.model, exp.postprocessor, dataset_info=exp.info)
path = tflite.export_tflite(module, {path!r})
h, w = module.input_size
rng = np.random.default_rng(0)
y, x = np.mgrid[:h, :w] / max(h, w)
image = np.stack([np.sin(7 * x + c) * np.cos(5 * y - c) for c in (0.3, 1.1, 2.0)], -1)
image = np.clip(127.5 * (image + 1), 0, 255).astype(np.uint8)[None]
expected = module.serve(tf.constant(image))[common.PANOPTIC].numpy()
runner = tf.lite.Interpreter(model_path=path).get_signature_runner()
got = runner(images=image)[common.PANOPTIC]
np.savez({out!r}, expected=expected, got=got)
"""


@pytest.mark.slow
@pytest.mark.parametrize("gin_file", TFLITE_BUILTIN_GIN_FILES)
def test_tflite_builtin_ops_match_in_memory_model(gin_file, tmp_path):
  paths = {"repo": REPO_ROOT, "gin_file": gin_file, "params": LOW_THRESHOLDS,
           "model_dir": str(tmp_path / "run"), "path": str(tmp_path / "model.tflite"),
           "out": str(tmp_path / "out.npz")}
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_SCRIPT).format(**paths)],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = np.load(tmp_path / "out.npz")
  assert len(np.unique(out["expected"])) > 2
  # TFLite's float kernels may flip an argmax where two slots tie to rounding.
  agreement = np.mean(out["got"] == out["expected"])
  assert agreement >= 0.99, agreement
