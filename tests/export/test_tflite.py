"""TFLite export: built-in ops only, and the same maps as the in-memory model.

The TFLite families (``TFLITE_BUILTIN_GIN_FILES`` in tests/export/conftest.py)
are converted by the session fixture ``exported_families``, in the process that builds
and exports their SavedModels, from the same in-memory export module; it runs
the TFLite model and the module on one picture at the model input size.
"""

import os

import numpy as np
import pytest

from tests.export.conftest import FAMILY_GIN_FILES, TFLITE_BUILTIN_GIN_FILES


@pytest.mark.slow
@pytest.mark.parametrize("gin_file", TFLITE_BUILTIN_GIN_FILES)
def test_tflite_builtin_ops_match_in_memory_model(gin_file, exported_families):
  family = FAMILY_GIN_FILES.index(gin_file)
  assert os.path.getsize(exported_families / f"model{family}.tflite") > 0
  out = np.load(exported_families / f"tflite{family}.npz")
  assert len(np.unique(out["expected"])) > 2
  # TFLite's float kernels may flip an argmax where two slots tie to rounding.
  agreement = np.mean(out["got"] == out["expected"])
  assert agreement >= 0.99, agreement
