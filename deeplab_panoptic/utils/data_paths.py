"""Where a dataset file named in gin lives: the one rule for ``DATA_DIR``.

A dataset gin file sets ``DATA_DIR`` once and names its files by bare file names
(``'train-*.tfrecord'``, ``'dataset_info.json'``); a bare name is read under the
data directory, a path with a directory part (``'data/shapes/train-*'``,
``'/abs/val-*'``, ``'gs://b/x-*'``) is used as it is. So
``--gin_param="DATA_DIR='/big/coco'"`` moves every file of the recipe, and a
pattern bound in full still means what it says. Imports no TensorFlow: the
start-up checks (``cli/preflight.py``) apply the same rule before it loads.
"""

import os
from typing import Optional


def under_data_dir(pattern: Optional[str], data_dir: Optional[str]) -> Optional[str]:
  """``pattern`` (comma-separated globs allowed) with bare file names put under ``data_dir``.

  Args:
    pattern: a file name, glob, or comma-separated globs; None stays None.
    data_dir: the data directory; None or '' leaves ``pattern`` unchanged.

  Returns:
    The pattern to read.
  """
  if not pattern or not data_dir:
    return pattern
  parts = [p.strip() for p in pattern.split(",")]
  return ",".join(p if (os.path.dirname(p) or "://" in p) else os.path.join(data_dir, p)
                  for p in parts if p)
