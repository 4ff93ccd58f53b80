"""scratchdet: ScratchDet (CVPR 2019) on Caffe SSD's formats, with a Caffe-faithful PyTorch engine."""

__version__ = "0.1.0"
