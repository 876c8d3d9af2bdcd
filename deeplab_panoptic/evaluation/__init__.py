"""Evaluation: exact PQ (panopticapi semantics), mIoU, instance AP.

* ``panoptic_quality.PanopticQuality`` — streaming PQ on label maps; its per-image
  core ``segment_statistics`` is shared with ``coco_pq``.
* ``semantic_iou.MeanIoU`` — streaming mIoU (integer confusion matrix).
* ``instance_ap.InstanceAP`` — mask AP of thing segments via pycocotools.
* ``metrics.PanopticMetrics`` — the three together, as the evaluator uses them.
* ``coco_pq`` — ``python -m deeplab_panoptic.evaluation.coco_pq``: panopticapi's
  ``pq_compute`` on COCO panoptic files (read and written by
  ``data.coco_panoptic``), exactly and fast.
"""
