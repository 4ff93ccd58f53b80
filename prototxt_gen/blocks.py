"""Building blocks shared by the backbones and the head: convolutions with their fillers and
multipliers, BatchNorm+Scale(+ReLU) in the two styles the released code uses, the pre-activation
residual BasicBlock, and SSD's extra 1x1/3x3 conv pairs.

Two BatchNorm styles, because the released code has both and they differ in more than names:

* ``BACKBONE`` (ScratchDet's ``bn_relu`` helper): BatchNorm with three ``lr_mult: 0`` params and
  no ``batch_norm_param`` (eps 1e-5), Scale with ``filler {value: 1} bias_filler {value: 0}`` and no
  ``param`` entries, so gamma and beta get weight decay.
* ``HEAD`` (SSD's ``ConvBNLayer``, used for the loc/conf convs): BatchNorm eps 0.001 /
  moving_average_fraction 0.999, Scale with ``param {lr_mult: 1 decay_mult: 0}`` twice.
"""
from __future__ import annotations

from .netspec import L, NetSpec, Top

BACKBONE = "backbone"
HEAD = "head"
XAVIER = {"type": "xavier"}
GAUSSIAN_001 = {"type": "gaussian", "std": 0.01}
_BN_STATS_FROZEN = [{"lr_mult": 0, "decay_mult": 0}] * 3


def conv(bottom: Top, num_output: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1,
         bias: bool = False, filler: dict = XAVIER, lr_mult: float = 1, unit_stride: bool = False) -> Top:
    """A Convolution call. With a bias (nets without BatchNorm): SSD's multipliers, lr 1/decay 1
    for the weights and lr 2/decay 0 for the bias, which starts at 0. Without: ``bias_term: false``
    and one ``param`` entry, as every conv followed by BatchNorm in the released code.
    ``unit_stride`` writes ``stride: 1`` too (where the authors' scripts pass the stride explicitly)."""
    kw = {"num_output": num_output, "kernel_size": kernel, "pad": pad, "weight_filler": dict(filler)}
    if stride != 1 or unit_stride:
        kw["stride"] = stride
    if dilation != 1:
        kw["dilation"] = dilation
    if bias:
        kw["param"] = [{"lr_mult": lr_mult, "decay_mult": 1}, {"lr_mult": 2 * lr_mult, "decay_mult": 0}]
        kw["bias_filler"] = {"type": "constant", "value": 0}
    else:
        kw["param"] = [{"lr_mult": lr_mult, "decay_mult": 1}]
        kw["bias_term"] = False
    return L.Convolution(bottom, **kw)


def batch_norm(bottom: Top, style: str, in_place: bool, lr_mult: float = 1) -> Top:
    """BatchNorm then Scale (in place on the BatchNorm's output), unnamed: NetSpec numbers them."""
    if style == BACKBONE:
        bn = L.BatchNorm(bottom, in_place=in_place, param=_BN_STATS_FROZEN)
        return L.Scale(bn, in_place=True, bias_term=True, filler={"value": 1}, bias_filler={"value": 0})
    bn = L.BatchNorm(bottom, in_place=in_place, param=_BN_STATS_FROZEN,
                     batch_norm_param={"eps": 0.001, "moving_average_fraction": 0.999})
    return L.Scale(bn, in_place=True, bias_term=True,
                   param=[{"lr_mult": lr_mult, "decay_mult": 0}] * 2,
                   filler={"type": "constant", "value": 1.0}, bias_filler={"type": "constant", "value": 0.0})


def bn_relu(bottom: Top, in_place: bool = True) -> Top:
    """Backbone BatchNorm+Scale+ReLU with automatic names (ScratchDet's ``bn_relu``). Not in place,
    the BatchNorm makes a new blob and leaves ``bottom`` untouched for an identity shortcut."""
    return L.ReLU(batch_norm(bottom, BACKBONE, in_place), in_place=True)


def named_bn_relu(net: NetSpec, name: str, relu_name: str | None, style: str = BACKBONE,
                  relu: bool = True, lr_mult: float = 1) -> None:
    """In-place BatchNorm+Scale(+ReLU) on ``net[name]`` with SSD's names (``<name>_bn``,
    ``<name>_scale``, then ``relu_name``). Named layers are always emitted, also when nothing reads
    the result (a source blob the head reads in place)."""
    top = net[name]
    if style == BACKBONE:
        net[f"{name}_bn"] = L.BatchNorm(top, in_place=True, param=_BN_STATS_FROZEN)
        net[f"{name}_scale"] = L.Scale(net[f"{name}_bn"], in_place=True, bias_term=True,
                                       filler={"value": 1}, bias_filler={"value": 0})
    else:
        net[f"{name}_bn"] = L.BatchNorm(top, in_place=True, param=_BN_STATS_FROZEN,
                                        batch_norm_param={"eps": 0.001, "moving_average_fraction": 0.999})
        net[f"{name}_scale"] = L.Scale(net[f"{name}_bn"], in_place=True, bias_term=True,
                                       param=[{"lr_mult": lr_mult, "decay_mult": 0}] * 2,
                                       filler={"type": "constant", "value": 1.0},
                                       bias_filler={"type": "constant", "value": 0.0})
    if relu:
        net[relu_name] = L.ReLU(net[f"{name}_scale"], in_place=True)


def conv_bn_relu(net: NetSpec, bottom: Top, name: str, num_output: int, kernel: int, stride: int = 1,
                 pad: int = 0, dilation: int = 1, bn: bool = True, relu_name: str | None = None) -> Top:
    """A named conv, then BatchNorm+Scale+ReLU in place (with ``bn``) or a biased conv + ReLU;
    the ReLU is ``relu_name`` (SSD: ``relu4_3`` in VGG, ``conv6_1_relu`` in the extras)."""
    relu_name = relu_name or f"{name}_relu"
    net[name] = conv(bottom, num_output, kernel, stride, pad, dilation, bias=not bn)
    if bn:
        named_bn_relu(net, name, relu_name)
    else:
        net[relu_name] = L.ReLU(net[name], in_place=True)
    return net[relu_name]


def basic_block(net: NetSpec, x: Top, names: tuple[str, str], channels: int, stride: int = 1,
                preactivate: bool = True, shortcut: str = "identity", pad: int = 1,
                shortcut_kernel: int = 1, unit_stride: bool = False) -> tuple[Top, Top]:
    """Pre-activation residual BasicBlock as ScratchDet releases it.

    ``x`` is the previous raw sum. BatchNorm (new blob)+Scale+ReLU gives ``a`` (skipped for the
    first block, whose input is already activated); ``names[0]`` = 3x3/stride conv on ``a``, then
    BatchNorm+Scale+ReLU in place, ``names[1]`` = 3x3/1 conv; the sum adds ``x`` (identity) or a
    bias-free, BatchNorm-free projection conv of ``a`` (``shortcut="project"``, 1x1/stride unless
    ``shortcut_kernel`` says otherwise). Returns (sum, last branch conv): SSD heads read the latter.
    ``unit_stride`` writes ``names[0]``'s stride also when it is 1 (the released text).
    """
    a = bn_relu(x, in_place=False) if preactivate else x
    short = x
    if shortcut == "project":
        short = conv(a, channels, shortcut_kernel, stride=stride, pad=0)   # unnamed: Convolution<n>
    net[names[0]] = conv(a, channels, 3, stride=stride, pad=pad, unit_stride=unit_stride)
    inner = bn_relu(net[names[0]], in_place=True)
    net[names[1]] = conv(inner, channels, 3, pad=1)
    return L.Eltwise(short, net[names[1]]), net[names[1]]


def ssd_extra_pair(net: NetSpec, bottom: Top, index: int, mid: int, out: int, stride: int, pad: int,
                   bn: bool) -> Top:
    """SSD's ``conv<i>_1`` (1x1, ``mid``) and ``conv<i>_2`` (3x3, ``out``), each with ReLU (and
    BatchNorm first when ``bn``); returns the activated ``conv<i>_2``."""
    t = conv_bn_relu(net, bottom, f"conv{index}_1", mid, 1, 1, 0, bn=bn)
    return conv_bn_relu(net, t, f"conv{index}_2", out, 3, stride, pad, bn=bn)
