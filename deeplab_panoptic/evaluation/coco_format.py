"""Moved to :mod:`deeplab_panoptic.data.coco_panoptic`, the one COCO panoptic codec.

Kept only until ``training/evaluator.py`` imports the new module; do not add to it.
"""

# pylint: disable=unused-import
from deeplab_panoptic.data.coco_panoptic import CocoPanopticWriter
from deeplab_panoptic.data.coco_panoptic import MAX_SEGMENT_ID
from deeplab_panoptic.data.coco_panoptic import coco_to_panoptic
from deeplab_panoptic.data.coco_panoptic import id_to_rgb
from deeplab_panoptic.data.coco_panoptic import image_id_from_name
from deeplab_panoptic.data.coco_panoptic import panoptic_to_coco
from deeplab_panoptic.data.coco_panoptic import read_id_png as read_segment_ids
from deeplab_panoptic.data.coco_panoptic import rgb_to_id
from deeplab_panoptic.data.coco_panoptic import write_json
