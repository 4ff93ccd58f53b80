"""The PyTorch runtime for Caffe nets: layers, the net interpreter, the SGD solver, training."""
