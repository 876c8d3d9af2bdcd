"""deeplab_panoptic: end-to-end panoptic segmentation with mask transformers."""

__version__ = "0.1.0"
