"""A small NetSpec: build a Caffe net as a graph of layer calls, then emit a ``pb.NetParameter``.

It follows the semantics of Caffe's ``python/caffe/net_spec.py`` (which SSD's and ScratchDet's
generator scripts use), because layer order and automatic names must come out the same:

* ``net.foo = L.Convolution(bottom, num_output=...)`` names the layer's first top ``foo``; the
  layer takes the name of its first top.
* A layer whose first top is never named gets an automatic name ``<Type><n>``, with one counter
  per type, numbered in emission order (``BatchNorm5``, ``Eltwise19``, ``Convolution1``).
* ``in_place=True`` writes the top over the (first) bottom blob.
* Emission is a post-order walk from the named tops in the order they were named: a layer comes
  after the layers producing its bottoms, and a layer no named top depends on is not emitted at
  all (the released Root-ResNet-34 relies on this: its last Eltwise disappears).

Keyword arguments go where Caffe's NetSpec puts them: ``*_param`` names and ``LayerParameter``
fields (``param``, ``include``, ``propagate_down``, ``loss_weight``, ``name`` ...) on the layer;
anything else into the layer type's own parameter message (``num_output`` into
``convolution_param``). Dicts fill sub-messages, lists fill repeated fields, enum values may be
given by name (``"LMDB"``) or number.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from google.protobuf.descriptor import FieldDescriptor

from scratchdet.caffe.schema import pb
from scratchdet.errors import ScratchDetError

def _param_fields() -> dict[str, str]:
    """Layer type -> its parameter field, from the schema as Caffe's NetSpec derives it: the field
    whose message is ``<Type>Parameter`` (``Convolution`` -> ``convolution_param``, ``Normalize`` ->
    ``norm_param``)."""
    out = {}
    for f in pb.LayerParameter.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.message_type is not None:
            out[f.message_type.name[: -len("Parameter")]] = f.name
    return out


_PARAM_FIELD = _param_fields()


def param_field(type_name: str) -> str | None:
    return _PARAM_FIELD.get(type_name)


def _set_scalar(msg, field: FieldDescriptor, value, where: str):
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        enum_value = field.enum_type.values_by_name.get(value)
        if enum_value is None:
            names = ", ".join(v.name for v in field.enum_type.values)
            raise ScratchDetError(f"{where}: {field.name} has no value {value!r} (one of {names})")
        value = enum_value.number
    return value


def assign(msg, name: str, value, where: str = "layer") -> None:
    """Set ``msg.<name>`` from a Python value, as Caffe's ``assign_proto`` does."""
    field = msg.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise ScratchDetError(f"{where}: {msg.DESCRIPTOR.name} has no field {name!r}")
    repeated = field.is_repeated
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    if repeated:
        values = value if isinstance(value, (list, tuple)) else [value]
        container = getattr(msg, name)
        for v in values:
            if is_message:
                item = container.add()
                for k, sub in v.items():
                    assign(item, k, sub, where)
            else:
                container.append(_set_scalar(msg, field, v, where))
    elif is_message:
        if not isinstance(value, dict):
            raise ScratchDetError(f"{where}: {name} needs a dict of fields, got {value!r}")
        sub = getattr(msg, name)
        for k, v in value.items():   # an empty dict leaves the field unset, as in Caffe's NetSpec
            assign(sub, k, v, where)
    else:
        setattr(msg, name, _set_scalar(msg, field, value, where))


class Top:
    """One output blob of a layer call."""

    __slots__ = ("fn", "n")

    def __init__(self, fn: "Function", n: int):
        self.fn, self.n = fn, n


class Function:
    """One layer call: type, input tops and parameters."""

    def __init__(self, type_name: str, inputs, params: dict):
        for i, top in enumerate(inputs):
            if not isinstance(top, Top):
                raise ScratchDetError(f"{type_name}: input {i} is not a layer output ({top!r})")
        self.type_name = type_name
        self.inputs = tuple(inputs)
        params = dict(params)
        self.ntop = params.pop("ntop", 1)
        self.in_place = params.pop("in_place", False)
        self.params = params
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def emit(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top.fn.emit(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        lp = pb.LayerParameter(type=self.type_name)
        lp.bottom.extend(bottoms)
        if self.in_place:
            lp.top.extend(bottoms[: max(self.ntop, 1)] if self.ntop else [])
        else:
            lp.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        lp.name = self._name(names, autonames)
        where = f"layer {lp.name!r} ({self.type_name})"
        for key, value in self.params.items():
            if key.endswith("param") or key in lp.DESCRIPTOR.fields_by_name:
                assign(lp, key, value, where)
            else:
                own = param_field(self.type_name)
                if own is None:
                    raise ScratchDetError(f"{where}: no parameter message for {key!r}")
                assign(getattr(lp, own), key, value, where)
        layers[self] = lp


class _Layers:
    """``L.Convolution(bottom, num_output=64)`` -> Top (or a tuple of Tops when ``ntop`` > 1)."""

    def __getattr__(self, type_name: str):
        def call(*inputs, **params):
            fn = Function(type_name, inputs, params)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return call


L = _Layers()


class NetSpec:
    """Named tops of a net under construction; ``to_proto()`` gives the ``NetParameter``."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, name, value):
        if not isinstance(value, Top):
            raise ScratchDetError(f"net[{name!r}] must be a layer output, got {value!r}")
        self.tops[name] = value

    def __getitem__(self, name) -> Top:
        try:
            return self.tops[name]
        except KeyError:
            raise ScratchDetError(f"no top named {name!r} in the net being built") from None

    def __contains__(self, name) -> bool:
        return name in self.tops

    def keys(self):
        return list(self.tops)

    def to_proto(self, name: str | None = None) -> pb.NetParameter:
        names = {top: key for key, top in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top.fn.emit(layers, names, autonames)
        net = pb.NetParameter()
        if name:
            net.name = name
        net.layer.extend(layers.values())
        return net
