"""Detection metrics: Caffe's and the VOC devkit's average precision, VOC and COCO evaluation,
and the result-file formats they read and write."""
