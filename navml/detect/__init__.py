"""Object detection (YOLOv2-style): anchors, targets, loss, NMS, augmentation, mAP, lanes.

Conventions shared by every module (see docs/detection.md):

* A box is ``(x0, y0, x1, y1)`` in pixels, float, ``x`` along columns and
  ``y`` along rows, pixel ``(r, c)`` covering ``[c, c + 1) x [r, r + 1)``;
  arrays of boxes are ``(N, 4)``.
* Class ids are the positions of the detection names in the class registry
  (``navml.config.detection_names``), ``0 .. C - 1``.
"""
