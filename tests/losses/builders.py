"""Criteria built in Python the way configs/losses/*.gin build them in gin.

The tests name one loss configuration by a few keyword arguments; these
helpers turn them into the terms, matcher and options of a `Criterion`
(the same parts, order and weights as the gin files).
"""

from typing import Optional

from deeplab_panoptic.losses import cmt
from deeplab_panoptic.losses import criterion
from deeplab_panoptic.losses import mask_losses
from deeplab_panoptic.losses import panoptic_segformer as psf
from deeplab_panoptic.losses import remax
from deeplab_panoptic.losses import semantic


def max_criterion(matcher_method: Optional[str] = None,
                  matching_mode: str = "shared",
                  mask_activation: str = "softmax",
                  pq_weight: float = 3.0,
                  mask_id_weight: float = 0.3,
                  instance_discrimination_weight: float = 1.0,
                  temperature: float = 0.3,
                  instance_discrimination_anchors: str = "thing",
                  negative_class_weighting: str = "constant",
                  semantic_weight: float = 1.0,
                  semantic_top_k_percent: float = 1.0,
                  aux_weight: float = 1.0,
                  crowd_as_void: bool = False,
                  instance_discrimination_sample_k: int = 0,
                  instance_discrimination_sample_temperature: float = 1.5,
                  mask_approximation_weight: float = 0.0,
                  remask_num_stages: int = 0,
                  stage_semantic_weight: float = 0.5,
                  reclass_eta: float = 0.0) -> criterion.Criterion:
  """MaX-DeepLab's criterion and its CMT / kMaX / ReMaX variants."""
  relaxation = remax.ReClass(reclass_eta) if reclass_eta else None
  terms = [
      mask_losses.PQClassLoss(pq_weight,
                              negative_weighting=negative_class_weighting,
                              target_relaxation=relaxation),
      mask_losses.PQDiceLoss(pq_weight),
      mask_losses.MaskIDCrossEntropy(mask_id_weight),
  ]
  if instance_discrimination_sample_k:
    terms.append(cmt.PixelContrastive(
        instance_discrimination_weight, temperature,
        instance_discrimination_sample_k,
        instance_discrimination_sample_temperature))
  else:
    terms.append(mask_losses.InstanceDiscrimination(
        instance_discrimination_weight, temperature,
        instance_discrimination_anchors))
  if mask_approximation_weight:
    terms.append(cmt.MaskApproximation(mask_approximation_weight))
  if remask_num_stages:
    terms.append(semantic.StageSemanticCrossEntropy(
        stage_semantic_weight, semantic_top_k_percent, remask_num_stages))
  terms.append(semantic.SemanticCrossEntropy(semantic_weight,
                                             semantic_top_k_percent))
  return criterion.Criterion(
      terms=terms,
      matcher=criterion.HungarianMatcher(mask_losses.PQSimilarityCost(),
                                         matching_mode, matcher_method),
      aux_weight=aux_weight, mask_activation=mask_activation,
      crowd_as_void=crowd_as_void,
      mask_logit_transform=(remax.ReMask(remask_num_stages)
                            if remask_num_stages else None))


def psf_criterion(matcher_method: Optional[str] = None,
                  matching_mode: str = "per_stage",
                  class_weight: float = 1.0,
                  dice_weight: float = 1.0,
                  location_weight: float = 5.0,
                  focal_alpha: float = 0.25,
                  focal_gamma: float = 2.0,
                  matching_class_weight: float = 1.0,
                  matching_dice_weight: float = 1.0,
                  aux_weight: float = 1.0,
                  mask_activation: str = "sigmoid",
                  dice_smooth: float = 1.0,
                  dice_squared_denominator: bool = False,
                  scale_target: str = "box",
                  crowd_as_void: bool = False) -> criterion.Criterion:
  """Panoptic SegFormer's criterion."""
  cost = psf.FocalDiceCost(matching_class_weight, matching_dice_weight,
                           focal_alpha, focal_gamma, dice_smooth,
                           dice_squared_denominator)
  return criterion.Criterion(
      terms=[psf.FocalClassLoss(class_weight, focal_alpha, focal_gamma),
             psf.MaskDiceLoss(dice_weight, dice_smooth,
                              dice_squared_denominator),
             psf.LocationL1(location_weight, scale_target)],
      matcher=criterion.HungarianMatcher(cost, matching_mode, matcher_method),
      aux_weight=aux_weight, mask_activation=mask_activation,
      crowd_as_void=crowd_as_void)
