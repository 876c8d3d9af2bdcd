"""Synthetic panoptic dataset: circles, squares and triangles on sky and ground.

The images are small (128 x 128 by default), generated on the fly from a seed,
and labelled with the :data:`~deeplab_panoptic.data.dataset_info.SHAPES`
description: three thing classes (circle, square, triangle) and two stuff
classes (sky, ground). They are meant for the CPU quickstart and for tests, so
they are built to be *learnable* by a tiny model in minutes:

* Stuff. The background is split by a wavy horizon (a sum of a few random
  low-frequency sinusoids plus a tilt) into sky above and ground below. Sky is a
  smooth vertical gradient in bluish hues with a little per-pixel jitter; ground
  is a grainy, blotchy texture in brown-to-green hues. Each appearance is drawn
  at random per image inside its band, so a model must learn the *kind* of
  texture, not one colour. With probability ``single_stuff_probability`` the
  whole background is a single stuff class.
* Things. ``min_instances .. max_instances`` shapes per image, with a solid,
  striped or checkered texture. Each class draws its hue from its own band of
  the hue wheel (``class_hue_width`` wide, centred at 0, 1/3 and 2/3), and the
  bands overlap, so colour hints at the class but only the shape decides it in
  the overlaps (``class_hue_width=1`` gives any hue to every class: a harder,
  shape-only dataset that a tiny CPU model does not learn in minutes). Colours
  are chosen to contrast with everything they are drawn over, so every outline
  is visible.
* Occlusion. Shapes are drawn in order; a later shape covers earlier ones. A
  placement is *rejected* (and another position, size and rotation tried) when
  it would leave an earlier shape with fewer than ``min_visible_pixels`` visible
  pixels, less than ``min_visible_fraction`` of its own area, or cut into more
  than one piece. So no label ever holds an instance reduced to a sliver or
  split in fragments, and no instance has to be removed after the fact: every
  instance in the label is one visible, connected, recognisable region. A shape that finds no acceptable placement in
  ``_MAX_PLACEMENT_TRIES`` tries is skipped (the image then has fewer shapes,
  never fewer than the ones already placed).

The panoptic label uses the :class:`DatasetInfo` convention
``train_id * label_divisor + instance``; thing instances are numbered 1..n in
drawing order (unique over the whole image), stuff has instance 0. There is no
void and no crowd.

Image ``index`` of ``seed`` is generated from ``numpy.random.default_rng((seed,
index))``, so it is the same however many images are generated, and in any
order.
"""

import colorsys
from typing import List, Tuple

import numpy as np
from scipy import ndimage

from deeplab_panoptic.data import dataset_info as dataset_info_lib

_INFO = dataset_info_lib.SHAPES
_TRAIN_ID = {name: i for i, name in enumerate(_INFO.class_names)}
CIRCLE = _TRAIN_ID["circle"]
SQUARE = _TRAIN_ID["square"]
TRIANGLE = _TRAIN_ID["triangle"]
SKY = _TRAIN_ID["sky"]
GROUND = _TRAIN_ID["ground"]
THING_CLASSES = (CIRCLE, SQUARE, TRIANGLE)

# How many positions/sizes/rotations to try for one shape before skipping it.
_MAX_PLACEMENT_TRIES = 40
# How many colours to try before falling back to the complement of what is below.
_MAX_COLOR_TRIES = 40
# Minimum Euclidean RGB distance between a shape's colours and the mean colour of
# every region it covers: enough for a clearly visible outline.
_MIN_CONTRAST = 80.0
# Connectivity of "one piece": rasterised triangle tips touch only diagonally.
_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  """Returns the float RGB colour in [0, 255] of an HSV triple in [0, 1]."""
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float64) * 255.0


def _smooth_noise(rng: np.random.Generator, height: int, width: int,
                  cells: int) -> np.ndarray:
  """Low-frequency noise: a random ``cells x cells`` grid, bilinearly upsampled.

  Returns:
    float64 [height, width], values in [-1, 1].
  """
  grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
  ys = (np.arange(height) + 0.5) / height * cells
  xs = (np.arange(width) + 0.5) / width * cells
  y0 = np.minimum(np.floor(ys).astype(np.int64), cells - 1)
  x0 = np.minimum(np.floor(xs).astype(np.int64), cells - 1)
  # Smoothstep weights avoid visible creases along the grid lines.
  ty = ys - y0
  tx = xs - x0
  ty = ty * ty * (3 - 2 * ty)
  tx = tx * tx * (3 - 2 * tx)
  top = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
  bottom = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
  return top * (1 - ty)[:, None] + bottom * ty[:, None]


def _sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A sky appearance: smooth bluish vertical gradient with faint jitter.

  Returns:
    float64 [height, width, 3] in [0, 255].
  """
  hue = rng.uniform(0.53, 0.64)
  top = _hsv_to_rgb(hue, rng.uniform(0.35, 0.75), rng.uniform(0.7, 0.95))
  bottom = _hsv_to_rgb(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.08, 0.35),
                       rng.uniform(0.85, 1.0))
  t = ((np.arange(height) + 0.5) / height)[:, None, None]
  sky = top * (1 - t) + bottom * t
  sky = np.broadcast_to(sky, (height, width, 3)).copy()
  sky += rng.normal(0.0, 2.0, size=(height, width, 1))
  return sky


def _ground(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A ground appearance: brown-to-green base with blotches and grain.

  Returns:
    float64 [height, width, 3] in [0, 255] (before clipping).
  """
  hue = rng.uniform(0.05, 0.33)
  base = _hsv_to_rgb(hue, rng.uniform(0.4, 0.85), rng.uniform(0.3, 0.6))
  blotches = _smooth_noise(rng, height, width, int(rng.integers(6, 12)))
  grain = rng.normal(0.0, rng.uniform(8.0, 16.0), size=(height, width, 1))
  return base + rng.uniform(12.0, 25.0) * blotches[..., None] + grain


def _background(rng: np.random.Generator, height: int, width: int,
                single_stuff_probability: float) -> Tuple[np.ndarray, np.ndarray]:
  """Draws the stuff layout and appearance.

  Returns:
    image: float64 [height, width, 3].
    semantic: int32 [height, width], SKY or GROUND.
  """
  sky = _sky(rng, height, width)
  ground = _ground(rng, height, width)
  if rng.random() < single_stuff_probability:
    is_sky = np.full((height, width), rng.random() < 0.5)
  else:
    x = np.arange(width) + 0.5
    horizon = height * rng.uniform(0.3, 0.7) + rng.uniform(-0.2, 0.2) * (x - width / 2)
    for _ in range(3):
      freq = rng.uniform(0.5, 3.0)
      amplitude = rng.uniform(1.0, 7.0) * height / 128.0
      horizon = horizon + amplitude * np.sin(2 * np.pi * freq * x / width
                                             + rng.uniform(0, 2 * np.pi))
    # Keep both regions large: no thin strip of sky or ground along an edge.
    horizon = np.clip(horizon, 0.15 * height, 0.85 * height)
    is_sky = (np.arange(height) + 0.5)[:, None] < horizon[None, :]
  image = np.where(is_sky[..., None], sky, ground)
  semantic = np.where(is_sky, SKY, GROUND).astype(np.int32)
  return image, semantic


def _shape_mask(cls: int, cx: float, cy: float, size: float, angle: float,
                xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
  """Rasterises one shape at pixel centres.

  Args:
    cls: CIRCLE, SQUARE or TRIANGLE.
    cx, cy: centre in pixels.
    size: circle diameter, square side / 0.9, triangle side / 1.2 (so the three
      classes have comparable areas for the same ``size``).
    angle: rotation in radians (ignored for circles).
    xx, yy: float [H, W] pixel-centre coordinates.

  Returns:
    bool [H, W].
  """
  dx = xx - cx
  dy = yy - cy
  if cls == CIRCLE:
    return dx * dx + dy * dy <= (size / 2) ** 2
  cos, sin = np.cos(angle), np.sin(angle)
  u = cos * dx + sin * dy
  v = -sin * dx + cos * dy
  if cls == SQUARE:
    half = 0.45 * size
    return (np.abs(u) <= half) & (np.abs(v) <= half)
  # Equilateral triangle pointing up (before rotation), centred on its centroid.
  side = 1.2 * size
  radius = side / np.sqrt(3.0)
  corners = [(radius * np.cos(a), radius * np.sin(a))
             for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
  inside = np.ones_like(u, dtype=bool)
  for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
    # Corners run clockwise on screen (y down): the inside is where the cross
    # product is non-negative.
    inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
  return inside


def _circumradius(cls: int, size: float) -> float:
  """Radius of a circle around the shape's centre that holds the whole shape."""
  if cls == CIRCLE:
    return size / 2
  if cls == SQUARE:
    return 0.45 * size * np.sqrt(2.0)
  return 1.2 * size / np.sqrt(3.0)


def _texture(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
  """A random two-tone pattern: solid, stripes or checker.

  Returns:
    bool [H, W]: True where the second colour is used.
  """
  kind = rng.choice(3, p=(0.4, 0.3, 0.3))
  if kind == 0:
    return np.zeros(xx.shape, dtype=bool)
  angle = rng.uniform(0, np.pi)
  u = np.cos(angle) * xx + np.sin(angle) * yy
  if kind == 1:
    period = rng.uniform(5.0, 9.0)
    return np.mod(u + rng.uniform(0, period), period) < period / 2
  v = -np.sin(angle) * xx + np.cos(angle) * yy
  cell = rng.uniform(4.0, 7.0)
  return (np.floor(u / cell) + np.floor(v / cell)) % 2 == 1


def _pick_colors(rng: np.random.Generator, below_means: List[np.ndarray],
                 hue_center: float = 0.0, hue_width: float = 1.0
                 ) -> Tuple[np.ndarray, np.ndarray]:
  """Two thing colours (main and pattern), both contrasting with what is below.

  Args:
    rng: the image's generator.
    below_means: mean RGB colour of each region the shape covers.
    hue_center: centre of the hue band, in [0, 1).
    hue_width: width of the hue band (1 = any hue).

  Returns:
    Two float RGB colours.
  """
  def contrast(color):
    return min(float(np.linalg.norm(color - m)) for m in below_means)

  for _ in range(_MAX_COLOR_TRIES):
    hue = (hue_center + (rng.random() - 0.5) * hue_width) % 1.0
    main = _hsv_to_rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    # The pattern colour keeps the hue but changes brightness, so a striped
    # shape still reads as one object.
    pattern = main * rng.uniform(0.45, 0.7) if main.max() > 150 else np.minimum(
        main * rng.uniform(1.5, 2.0) + 40.0, 255.0)
    if contrast(main) >= _MIN_CONTRAST and contrast(pattern) >= _MIN_CONTRAST:
      return main, pattern
  # Rare: fall back to the complement of the average colour below, solid.
  main = 255.0 - np.mean(below_means, axis=0)
  return main, main


def generate_example(seed: int, index: int, height: int = 128, width: int = 128,
                     min_instances: int = 2, max_instances: int = 6,
                     min_size: float = 14.0, max_size: float = 44.0,
                     single_stuff_probability: float = 0.2,
                     min_visible_pixels: int = 30,
                     min_visible_fraction: float = 0.5,
                     class_hue_width: float = 0.5
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """Generates image ``index`` of the shapes dataset with seed ``seed``.

  Args:
    seed: dataset seed, >= 0.
    index: image index, >= 0. The result depends only on (seed, index) and the
      other arguments.
    height: image height in pixels.
    width: image width in pixels.
    min_instances: fewest shapes attempted per image.
    max_instances: most shapes per image.
    min_size: smallest shape size in pixels (circle diameter; squares and
      triangles have comparable areas), for a 128-pixel image; scaled with
      ``min(height, width) / 128``.
    max_size: largest shape size, like ``min_size``.
    single_stuff_probability: probability that only one stuff class (sky or
      ground) fills the background.
    min_visible_pixels: a placement that leaves an earlier shape with fewer
      visible pixels is rejected.
    min_visible_fraction: a placement that leaves an earlier shape with less
      than this fraction of its area visible is rejected (as is one that cuts
      an earlier shape in two).
    class_hue_width: width of each thing class's hue band (bands centred at 0,
      1/3, 2/3 of the hue wheel; 0.5 makes neighbouring bands overlap by 1/6;
      1.0 gives every class any hue).

  Returns:
    image: uint8 [height, width, 3] RGB.
    panoptic: int32 [height, width], ``train_id * 256 + instance``.

  Raises:
    ValueError: on a negative seed or index, or inconsistent sizes.
  """
  if seed < 0 or index < 0:
    raise ValueError(f"shapes: seed ({seed}) and index ({index}) must be >= 0.")
  if not 0 < min_instances <= max_instances or not 0 < min_size <= max_size:
    raise ValueError("shapes: need 0 < min_instances <= max_instances and "
                     f"0 < min_size <= max_size, got {min_instances}, {max_instances}, "
                     f"{min_size}, {max_size}.")
  rng = np.random.default_rng((seed, index))
  image, semantic = _background(rng, height, width, single_stuff_probability)
  # Label of every pixel while drawing: -1 - stuff class for background, else the
  # instance number (1..n). The panoptic label is assembled at the end.
  owner = -1 - semantic
  areas = {}
  classes = {}
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
  scale = min(height, width) / 128.0
  num_instances = int(rng.integers(min_instances, max_instances + 1))
  for _ in range(num_instances):
    cls = int(rng.choice(THING_CLASSES))
    for _ in range(_MAX_PLACEMENT_TRIES):
      size = rng.uniform(min_size, max_size) * scale
      radius = _circumradius(cls, size)
      if 2 * radius + 2 >= min(height, width):
        continue
      cx = rng.uniform(radius + 1, width - radius - 1)
      cy = rng.uniform(radius + 1, height - radius - 1)
      angle = (rng.uniform(-np.pi / 6, np.pi / 6) if cls == SQUARE
               else rng.uniform(0, 2 * np.pi))
      mask = _shape_mask(cls, cx, cy, size, angle, xx, yy)
      if mask.sum() < min_visible_pixels:
        continue
      covered = owner[mask]
      ok = True
      for inst in np.unique(covered[covered > 0]):
        visible = (owner == inst) & ~mask
        if (visible.sum() < max(min_visible_pixels, min_visible_fraction * areas[inst])
            or ndimage.label(visible, _EIGHT_NEIGHBOURS)[1] != 1):
          ok = False
          break
      if ok:
        break
    else:
      continue  # No acceptable placement: skip this shape.
    below = [image[mask & (owner == o)].mean(axis=0) for o in np.unique(covered)]
    main, pattern = _pick_colors(rng, below, THING_CLASSES.index(cls) / len(THING_CLASSES),
                                 class_hue_width)
    two_tone = _texture(rng, xx - cx, yy - cy)
    colors = np.where(two_tone[..., None], pattern, main)
    colors = colors + rng.normal(0.0, 3.0, size=(height, width, 1))
    image[mask] = colors[mask]
    inst = len(areas) + 1
    owner[mask] = inst
    areas[inst] = int(mask.sum())
    classes[inst] = cls
  panoptic = np.where(owner < 0, (-1 - owner) * _INFO.label_divisor, 0)
  for inst, cls in classes.items():
    panoptic = np.where(owner == inst, cls * _INFO.label_divisor + inst, panoptic)
  image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return image, panoptic.astype(np.int32)
