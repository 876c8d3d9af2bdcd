"""Tests of deeplab_panoptic.data."""
