"""A fixed synthetic batch and model outputs holding every key any loss reads.

Shared by the recipe-loss regression test (`test_recipe_losses.py`) and the
script that wrote its fixture. Everything comes from numpy's PCG64 generator
with a fixed seed, which gives the same numbers on every platform.

Shapes: B = 2 images, 16 x 16 ground truth, predictions at 8 x 8 (the aux
stages' mask logits at 4 x 4, resized by the loss), N = 8 predictions, K = 5
ground-truth slots, C = 4 classes, D = 6 embedding channels, M = 4 reference
points, 2 auxiliary stages and 2 earlier location-decoder layers.
"""

from typing import Any, Dict, Tuple

import numpy as np

from deeplab_panoptic import common

B, H, W = 2, 16, 16
HP, WP = 8, 8
N, K, C, D, M = 8, 5, 4, 6, 4
NUM_AUX = 2
VOID = 255
AUX_LOCATIONS = "aux_locations"  # the Panoptic SegFormer decoder's key


def make_batch(rng: np.random.Generator) -> Dict[str, np.ndarray]:
  """Ground truth with void, crowd, an empty slot and a vanishing mask."""
  mask_id = rng.choice([-1, 0, 1, 2, 3], size=(B, H, W),
                       p=[0.2, 0.3, 0.2, 0.2, 0.1]).astype(np.int32)
  # Image 1: slot 4 covers one pixel the stride-2 resize never samples.
  mask_id[1, 0, 0] = 4
  classes = np.array([[1, 3, 0, 2, -1], [0, 2, 3, 1, 1]], np.int32)
  is_thing = np.array([[True, False, True, False, False],
                       [True, True, False, True, True]])
  # Image 0: slot 3 is real in the label map but its class is -1 (padding).
  classes[0, 3] = -1
  semantic = np.full((B, H, W), VOID, np.int32)
  for b in range(B):
    for k in range(K):
      if classes[b, k] >= 0:
        semantic[b][mask_id[b] == k] = classes[b, k]
  mask_id[0][mask_id[0] == 3] = -1
  crowd = (mask_id == -1) & (rng.random((B, H, W)) < 0.5)
  semantic[crowd] = 2
  weight = np.where(semantic != VOID, 1.0, 0.0).astype(np.float32)
  weight[(semantic != VOID) & (rng.random((B, H, W)) < 0.2)] = 3.0
  return {
      common.GT_MASK_ID: mask_id,
      common.GT_CLASSES: classes,
      common.GT_IS_THING: is_thing,
      common.GT_SEMANTIC: semantic,
      common.GT_SEMANTIC_WEIGHT: weight,
  }


def _stage(rng: np.random.Generator, mask_size: Tuple[int, int],
           scale: float, with_geometry: bool) -> Dict[str, np.ndarray]:
  emb = rng.normal(size=(B, HP, WP, D))
  stage = {
      common.PRED_CLASS_LOGITS: scale * rng.normal(size=(B, N, C + 1)),
      common.PRED_MASK_LOGITS: scale * rng.normal(size=(B,) + mask_size + (N,)),
      common.PRED_PIXEL_EMBEDDING: emb / np.linalg.norm(emb, axis=-1,
                                                        keepdims=True),
      common.PRED_STAGE_SEMANTIC_LOGITS: rng.normal(size=(B, 4, 4, C)),
  }
  if with_geometry:
    stage[common.PRED_REFERENCE_POINTS] = rng.uniform(size=(B, N, M, 2))
    stage[common.PRED_LOCATION_CENTER] = rng.uniform(size=(B, N, 2))
    stage[common.PRED_LOCATION_SCALE] = rng.uniform(0.05, 1.0, size=(B, N, 2))
  return {key: value.astype(np.float32) for key, value in stage.items()}


def make_outputs(rng: np.random.Generator,
                 aux_geometry: bool) -> Dict[str, Any]:
  """Model outputs; `aux_geometry`: aux stages hold points and locations."""
  outputs = _stage(rng, (HP, WP), 2.0, with_geometry=True)
  outputs[common.PRED_SEMANTIC_LOGITS] = rng.normal(
      size=(B, HP, WP, C)).astype(np.float32)
  outputs[common.AUX_OUTPUTS] = [_stage(rng, (4, 4), 1.5, aux_geometry)
                                 for _ in range(NUM_AUX)]
  outputs[AUX_LOCATIONS] = [
      {common.PRED_LOCATION_CENTER:
           rng.uniform(size=(B, N, 2)).astype(np.float32),
       common.PRED_LOCATION_SCALE:
           rng.uniform(0.05, 1.0, size=(B, N, 2)).astype(np.float32)}
      for _ in range(2)]
  return outputs


VARIANTS = ("aux_geometry", "final_geometry")


def make_inputs(variant: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """(batch, outputs) of one variant, the same numbers on every call."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
  rng = np.random.default_rng(2024)
  batch = make_batch(rng)
  return batch, make_outputs(rng, aux_geometry=variant == "aux_geometry")
