"""Moved to :mod:`deeplab_panoptic.utils.files` (one atomic write for every layer).

Kept only until ``training/evaluator.py`` and ``training/experiment.py`` import
the new module; do not add to it.
"""

# pylint: disable=unused-import
from deeplab_panoptic.utils.files import write_json_atomic
from deeplab_panoptic.utils.files import write_text_atomic
