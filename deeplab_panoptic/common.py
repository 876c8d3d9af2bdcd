"""String keys: the contract between data, model, loss, postprocess, metrics and export.

Every dict that crosses a module boundary uses these keys and nothing else.

Conventions shared by all modules:
  * Semantic labels are contiguous train ids in ``[0, num_classes)``; the dataset's
    ``ignore_label`` marks void (unlabeled) pixels and padding.
  * A panoptic label is ``semantic * label_divisor + instance``. Stuff pixels have
    instance 0. A thing pixel with instance 0 is a *crowd* region: it keeps its
    semantic class (the semantic loss sees it) but belongs to no ground-truth mask.
    Void pixels have panoptic label ``ignore_label * label_divisor``.
  * Class logits have ``num_classes + 1`` entries; the last one is the void /
    "no object" class (``num_classes``).
"""

# ----------------------------------------------------------------------------
# Decoded record (one example, before batching), see docs/data_format.md.
# ----------------------------------------------------------------------------
IMAGE = "image"                        # float32 [B, H, W, 3], x / 127.5 - 1, padding 0.
IMAGE_NAME = "image_name"              # string [B], source file name (no directory).
ORIGINAL_HEIGHT = "original_height"    # int32 [B], height of the stored image.
ORIGINAL_WIDTH = "original_width"      # int32 [B], width of the stored image.
RESIZED_HEIGHT = "resized_height"      # int32 [B], valid height inside the padded crop.
RESIZED_WIDTH = "resized_width"        # int32 [B], valid width inside the padded crop.

# ----------------------------------------------------------------------------
# Ground truth (training and evaluation batches). Every shape is static.
# ----------------------------------------------------------------------------
GT_PANOPTIC = "gt_panoptic"            # int32 [B, H, W] panoptic labels at crop size.
GT_SEMANTIC = "gt_semantic"            # int32 [B, H, W] train ids, ignore_label at void.
GT_MASK_ID = "gt_mask_id"              # int32 [B, H, W] index in [0, K) of the pixel's
                                       #   ground-truth mask, -1 for void, crowd, padding.
GT_CLASSES = "gt_classes"              # int32 [B, K] class of each mask, -1 for padding.
GT_IS_THING = "gt_is_thing"            # bool  [B, K] whether each mask is a thing.
GT_SEMANTIC_WEIGHT = "gt_semantic_weight"  # float32 [B, H, W] per-pixel semantic loss
                                           #   weight (0 at void and padding).
GT_CROWD = "gt_crowd"                  # bool  [B, H, W] crowd pixels (thing class,
                                       #   instance 0): semantic class kept, no mask.
# For exact evaluation at the original resolution (eval batches only).
GT_PANOPTIC_ORIGINAL = "gt_panoptic_original"  # int32 [B, Hmax, Wmax], original
                                               #   resolution, padded with void.

# ----------------------------------------------------------------------------
# Features passed between model parts (modeling/base.py: "stride<s>" keys plus these).
# ----------------------------------------------------------------------------
MEMORY = "memory"                      # MaX-DeepLab memory path: float32 [B, N, C]
                                       #   (activated), or a CMT-DeepLab state dict
                                       #   (modeling/layers/cmt_layer.py).
SEMANTIC_FEATURE = "semantic_feature"  # float32 [B, h, w, c] feature a pixel decoder
                                       #   keeps apart for the semantic head.

# ----------------------------------------------------------------------------
# Model outputs.
# ----------------------------------------------------------------------------
PRED_CLASS_LOGITS = "pred_class_logits"        # float32 [B, N, num_classes + 1]
PRED_MASK_LOGITS = "pred_mask_logits"          # float32 [B, h, w, N] (stride 4)
PRED_PIXEL_EMBEDDING = "pred_pixel_embedding"  # float32 [B, h, w, D], L2-normalised
PRED_SEMANTIC_LOGITS = "pred_semantic_logits"  # float32 [B, hs, ws, num_classes]
AUX_OUTPUTS = "aux_outputs"                    # list of dicts with the three keys above
                                               #   (class, mask, pixel embedding), one per
                                               #   transformer-decoder layer.
# Training-only outputs of some model families (any output dict, final or aux):
PRED_STAGE_SEMANTIC_LOGITS = "pred_stage_semantic_logits"  # float32 [B, hs, ws, num_classes]
                                               #   ReMaX per-stage semantic logits (ReMask).
PRED_AUX_SEMANTIC_LOGITS = "pred_aux_semantic_logits"  # float32 [B, hs, ws, num_classes]
                                               #   auxiliary per-pixel head (SemanticSegmenter).
PRED_REFERENCE_POINTS = "pred_reference_points"  # float32 [B, N, M, 2] CMT reference-mask
                                               #   points, (y, x) in [0, 1].
PRED_LOCATION_CENTER = "pred_location_center"  # float32 [B, N, 2] P-SegFormer mask centre,
                                               #   (y, x) in [0, 1].
PRED_LOCATION_SCALE = "pred_location_scale"    # float32 [B, N, S] P-SegFormer mask scale
                                               #   (S = 2: box (h, w) / image; S = 1: area).
AUX_LOCATIONS = "aux_locations"                # list of dicts with PRED_LOCATION_CENTER /
                                               #   SCALE of earlier P-SegFormer location layers.

# ----------------------------------------------------------------------------
# Panoptic inference outputs (postprocess), at the model input resolution.
# ----------------------------------------------------------------------------
PANOPTIC = "panoptic"                  # int32 [B, H, W] semantic * label_divisor + instance
SEMANTIC = "semantic"                  # int32 [B, H, W] train ids, ignore_label at void.
INSTANCE = "instance"                  # int32 [B, H, W] instance ids (0 for stuff / void).
SEGMENT_CLASSES = "segment_classes"    # int32 [B, N] class of each mask slot (-1 if dropped).
SEGMENT_SCORES = "segment_scores"      # float32 [B, N] class confidence of each slot.
SEGMENT_AREAS = "segment_areas"        # int32 [B, N] pixels each slot holds in PANOPTIC.
# Overlapping instances (Mask2Former's instance inference, postprocess/mask_results.py):
INSTANCE_MASKS = "instance_masks"      # bool [B, H, W, K] binary mask of each of K instances.
INSTANCE_CLASSES = "instance_classes"  # int32 [B, K] thing class of each instance.
INSTANCE_SCORES = "instance_scores"    # float32 [B, K] class prob x mean mask prob inside.

# ----------------------------------------------------------------------------
# Loss names (also TensorBoard scalar names under "losses/").
# ----------------------------------------------------------------------------
LOSS_TOTAL = "total_loss"
LOSS_PQ_CLASS = "pq_class_loss"
LOSS_PQ_DICE = "pq_dice_loss"
LOSS_MASK_ID = "mask_id_loss"
LOSS_INSTANCE_DISCRIMINATION = "instance_discrimination_loss"
LOSS_SEMANTIC = "semantic_loss"
LOSS_AUX_SEMANTIC = "aux_semantic_loss"      # a per-pixel model's auxiliary head.
LOSS_STAGE_SEMANTIC = "stage_semantic_loss"    # ReMaX per-stage semantic loss.
LOSS_MASK_APPROXIMATION = "mask_approximation_loss"  # CMT eq. 13.
LOSS_FOCAL_CLASS = "focal_class_loss"          # Panoptic SegFormer.
LOSS_DICE = "dice_loss"                        # Panoptic SegFormer.
LOSS_LOCATION = "location_loss"                # Panoptic SegFormer eq. 4.
LOSS_CLASS_CE = "class_ce_loss"                # Mask2Former, "no object" weighted.
LOSS_MASK_BCE = "mask_bce_loss"                # Mask2Former, on sampled points.
