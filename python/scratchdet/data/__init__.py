"""Data tools: label maps, VOC/COCO/synthetic sources, the SSD ``AnnotatedDatum`` LMDB writer and
reader, validation, and (in ``augment``) the SSD data augmentation.

Submodules are imported where used so that, e.g., worker processes reading an LMDB do not pay for
the converters.
"""
