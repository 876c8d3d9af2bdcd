"""Training losses: a `criterion.Criterion` summing named loss terms.

Importing the package registers every gin-configurable term, matcher and
cost (configs/losses/ names them).
"""

# pylint: disable=unused-import
from deeplab_panoptic.losses import criterion
from deeplab_panoptic.losses import semantic
from deeplab_panoptic.losses import mask_losses
from deeplab_panoptic.losses import cmt
from deeplab_panoptic.losses import remax
from deeplab_panoptic.losses import panoptic_segformer
from deeplab_panoptic.losses import mask2former
