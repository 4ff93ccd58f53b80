"""Generators of Caffe SSD prototxts for every network variant of the ScratchDet paper."""
