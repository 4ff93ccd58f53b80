"""Caffe's format upgrades and its split insertion, on ``NetParameter`` messages (caffe-ssd-spec,
upgrade_proto and insert_splits), shared by shape inference (``caffe/shapes.py``) and the net
interpreter (``engine/net.py``): V1 ``layers`` entries become ``layer`` entries, the deprecated
``input``/``input_shape``/``input_dim`` fields become a leading Input layer, and a top read more
than once feeds a Split layer named as Caffe names it. Each function returns a new message (or the
argument itself when there is nothing to upgrade); none needs torch.
"""
from __future__ import annotations

from ..errors import ScratchDetError
from .schema import pb

# -- upgrades of old formats (Caffe's upgrade_proto) ---------------------------------------------------

V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}


def upgrade_v1(net_param):
    """A copy of ``net_param`` with legacy V1 ``layers`` (field 2) turned into ``layer`` entries:
    name, type string, bottoms, tops, rules, ``blobs_lr``/``weight_decay`` as ParamSpecs, blobs.
    (Layer-specific V1 parameters are not kept; only weights are read from V1 files.)"""
    if not net_param.layers:
        return net_param
    if net_param.layer:
        raise ScratchDetError("net has both 'layer' and legacy 'layers' entries")
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layers[:]
    enum = pb.V1LayerParameter.LayerType
    for v1 in net_param.layers:
        lp = out.layer.add(name=v1.name, type=V1_TYPES.get(enum.Name(v1.type), enum.Name(v1.type)))
        lp.bottom.extend(v1.bottom)
        lp.top.extend(v1.top)
        lp.include.extend(v1.include)
        lp.exclude.extend(v1.exclude)
        for i in range(max(len(v1.blobs_lr), len(v1.weight_decay))):
            spec = lp.param.add()
            if i < len(v1.blobs_lr):
                spec.lr_mult = v1.blobs_lr[i]
            if i < len(v1.weight_decay):
                spec.decay_mult = v1.weight_decay[i]
        lp.blobs.extend(v1.blobs)
    return out


def upgrade_inputs(net_param, source: str | None = None):
    """The deprecated ``input`` + ``input_shape``/``input_dim`` fields as a leading Input layer
    named "input" (Caffe's UpgradeNetInput). A count of shapes that does not match the inputs is an
    error (naming ``source`` when given), not a silently short or missing shape."""
    if not net_param.input:
        return net_param
    where = f"{source}: " if source else ""
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:], out.input[:], out.input_shape[:], out.input_dim[:]
    layer = out.layer.add(name="input", type="Input")
    if net_param.input_shape and len(net_param.input_shape) != len(net_param.input):
        raise ScratchDetError(f"{where}net has {len(net_param.input)} inputs and {len(net_param.input_shape)} input_shape entries")
    if not net_param.input_shape and len(net_param.input_dim) != 4 * len(net_param.input):
        raise ScratchDetError(f"{where}net has {len(net_param.input)} inputs and {len(net_param.input_dim)} input_dim values "
                              "(need 4 per input)")
    for i, name in enumerate(net_param.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if net_param.input_shape:
            shape.dim.extend(net_param.input_shape[i].dim)
        else:
            shape.dim.extend(net_param.input_dim[4 * i:4 * i + 4])
    out.layer.extend(net_param.layer)
    return out


# -- Caffe's InsertSplits, for writing caffemodels with the layers Caffe's net holds ---------------------

def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(layer: str, blob: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(net_param):
    """A copy of ``net_param`` where every top read more than once (a nonzero explicit loss weight
    counts as a reader) feeds a Split layer placed right after its producer, each reader taking its
    own Split output: the layer list Caffe's ``Net`` builds."""
    last_top: dict[str, tuple[int, int]] = {}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    readers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, lp in enumerate(net_param.layer):
        for j, b in enumerate(lp.bottom):
            if b not in last_top:
                raise ScratchDetError(f"layer {lp.name!r}: unknown bottom blob {b!r}")
            source[(i, j)] = last_top[b]
            readers[last_top[b]] = readers.get(last_top[b], 0) + 1
        for j, t in enumerate(lp.top):
            last_top[t] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            idx = last_top[lp.top[j]]
            loss_weight[idx] = lp.loss_weight[j]
            if lp.loss_weight[j]:
                readers[idx] = readers.get(idx, 0) + 1
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, lp in enumerate(net_param.layer):
        new = out.layer.add()
        new.CopyFrom(lp)
        for j, b in enumerate(lp.bottom):
            idx = source[(i, j)]
            if readers.get(idx, 0) > 1:
                producer = net_param.layer[idx[0]].name
                k = next_split.get(idx, 0)
                new.bottom[j] = split_blob_name(producer, b, idx[1], k)
                next_split[idx] = k + 1
        for j, t in enumerate(lp.top):
            idx = (i, j)
            count = readers.get(idx, 0)
            if count <= 1:
                continue
            weight = loss_weight.get(idx, 0.0)
            split = out.layer.add(name=split_layer_name(lp.name, t, j), type="Split")
            split.bottom.append(t)
            for k in range(count):
                split.top.append(split_blob_name(lp.name, t, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                del new.loss_weight[:]
                next_split[idx] = 1     # the loss takes the first Split output
    return out
