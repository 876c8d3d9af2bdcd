"""deeplab_panoptic: end-to-end panoptic segmentation with mask transformers."""

__version__ = "0.1.0"


def load(path):
  """A predictor for a SavedModel folder or a training run's model directory.

  ``deeplab_panoptic.load(path).predict([image, ...])`` takes numpy uint8
  ``[H, W, 3]`` or PIL images of any sizes and returns one dict of numpy arrays
  per image (the maps the model declares at the image's size); see
  ``deeplab_panoptic/inference.py``. TensorFlow is imported here, on first use,
  so that ``import deeplab_panoptic`` stays cheap.
  """
  from deeplab_panoptic import inference  # pylint: disable=g-import-not-at-top
  return inference.load(path)
