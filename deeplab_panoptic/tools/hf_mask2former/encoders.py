"""Hugging Face backbone weights -> our pixel encoders (Mask2Former's two kinds).

``assign(encoder, weights, prefix)`` sets every variable of a built encoder from
the arrays named ``<prefix><name>`` and returns the names it used; for
``Mask2FormerForUniversalSegmentation`` the prefix is
``model.pixel_level_module.encoder.``.

* ``SwinEncoder`` <- ``SwinBackbone``: ``tools/import_swin.py``'s Hugging Face
  mapping (every array under the prefix used; the unused final
  ``layernorm.*`` that transformers' ``SwinBackbone`` may save is not returned).
* ``TorchvisionResNetEncoder`` <- ``ResNetBackbone`` (bottleneck layers):
  ``tools/import_resnet.py``'s transformers mapping (its name table); the batch
  norms' ``num_batches_tracked`` (a step counter) are not used and not returned.

Anything else under the prefix, a missing array or a shape that does not fit is
one ``ValueError`` naming the array.
"""

from typing import Dict, List

import numpy as np

from deeplab_panoptic.modeling.pixel_encoders.swin import SwinEncoder
from deeplab_panoptic.modeling.pixel_encoders.torchvision_resnet import TorchvisionResNetEncoder
from deeplab_panoptic.tools import import_resnet, import_swin


def assign_resnet(encoder: TorchvisionResNetEncoder, weights: Dict[str, np.ndarray],
                  prefix: str) -> List[str]:
  """Sets every variable of a built ``encoder`` from ``ResNetBackbone`` arrays.

  Returns the names used (with the prefix); raises ``ValueError`` as
  ``import_resnet.load_resnet_state`` does.
  """
  return import_resnet.load_resnet_state(encoder, weights, prefix, "hf")


def assign_swin(encoder: SwinEncoder, weights: Dict[str, np.ndarray],
                prefix: str) -> List[str]:
  """Sets every variable of a built ``encoder`` from ``SwinBackbone`` arrays.

  Returns the names used (with the prefix); raises ``ValueError`` as
  ``import_swin.load_swin_state`` does. Per-stage norms are required here
  (``SwinBackbone`` always has them).
  """
  state = import_swin.strip_prefix(weights, prefix)
  _, entries, stage_norms = import_swin.swin_entries(encoder, state, "hf")
  missing = sorted(n for e in stage_norms for n in e.names if n not in state)
  if missing:
    raise ValueError(f"Swin import: {prefix}{missing[0]} is missing (the backbone's "
                     "per-stage norms).")
  import_swin.load_swin_state(encoder, state, "hf")
  return [prefix + n for e in entries + stage_norms for n in e.names]


def assign(encoder, weights: Dict[str, np.ndarray], prefix: str) -> List[str]:
  """``assign_swin`` or ``assign_resnet`` by the encoder's type."""
  if isinstance(encoder, SwinEncoder):
    return assign_swin(encoder, weights, prefix)
  if isinstance(encoder, TorchvisionResNetEncoder):
    return assign_resnet(encoder, weights, prefix)
  raise ValueError(f"Mask2Former import: no Hugging Face mapping for the pixel encoder "
                   f"{type(encoder).__name__} (SwinEncoder or TorchvisionResNetEncoder).")
