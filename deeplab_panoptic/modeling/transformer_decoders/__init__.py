"""deeplab_panoptic."""
