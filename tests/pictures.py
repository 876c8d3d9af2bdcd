"""Synthetic test pictures shared by the export and inference tests."""

import numpy as np


def disc_picture(height: int, width: int, seed: int, min_radius: float = 0.05) -> np.ndarray:
  """uint8 [height, width, 3]: smooth colour fields with four discs, closer to a
  photo than noise, so an untrained model's maps hold several segments."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width] / max(height, width)
  image = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in rng.uniform(0, 3, 3)], -1)
  for _ in range(4):
    cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(min_radius, 0.3)
    image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(-1, 1, 3)
  return np.clip(127.5 * (image + 1), 0, 255).astype(np.uint8)
