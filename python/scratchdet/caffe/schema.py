"""Load ``caffe.proto`` into protobuf message classes without ``protoc``.

The schema file beside this module is the single source of truth. A small
parser for the proto2 subset it uses (messages, nested enums, scalar/message/
enum fields, ``default`` and ``packed`` options) turns it into a
``FileDescriptorProto``; protobuf's own descriptor pool and message factory
then give classes that are wire- and text-compatible with Caffe's ``caffe_pb2``.
"""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_PATH = Path(__file__).with_name("caffe.proto")

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _FDP.TYPE_DOUBLE, "float": _FDP.TYPE_FLOAT, "int64": _FDP.TYPE_INT64,
    "uint64": _FDP.TYPE_UINT64, "int32": _FDP.TYPE_INT32, "uint32": _FDP.TYPE_UINT32,
    "bool": _FDP.TYPE_BOOL, "string": _FDP.TYPE_STRING, "bytes": _FDP.TYPE_BYTES,
    "sint32": _FDP.TYPE_SINT32, "sint64": _FDP.TYPE_SINT64,
}
_LABELS = {"optional": _FDP.LABEL_OPTIONAL, "repeated": _FDP.LABEL_REPEATED,
           "required": _FDP.LABEL_REQUIRED}
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[A-Za-z_][\w.]*|-?[\d.]+(?:[eE][+-]?\d+)?|[{}=;\[\],]')


class SchemaError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    text = re.sub(r"//[^\n]*", "", text)
    toks, pos = [], 0
    for m in _TOKEN.finditer(text):
        if text[pos:m.start()].strip():
            raise SchemaError(f"caffe.proto: unexpected text {text[pos:m.start()].strip()[:20]!r}")
        toks.append(m.group(0))
        pos = m.end()
    return toks


class _Parser:
    def __init__(self, toks: list[str]):
        self.toks, self.i = toks, 0

    def next(self) -> str:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, want: str) -> None:
        got = self.next()
        if got != want:
            raise SchemaError(f"caffe.proto: expected {want!r}, got {got!r}")

    def parse_file(self) -> descriptor_pb2.FileDescriptorProto:
        fdp = descriptor_pb2.FileDescriptorProto(name="caffe.proto", syntax="proto2")
        while self.i < len(self.toks):
            tok = self.next()
            if tok == "syntax":
                self.expect("=")
                self.next()
                self.expect(";")
            elif tok == "package":
                fdp.package = self.next()
                self.expect(";")
            elif tok == "message":
                self.parse_message(fdp.message_type.add())
            elif tok == "enum":
                self.parse_enum(fdp.enum_type.add())
            else:
                raise SchemaError(f"caffe.proto: unexpected {tok!r} at top level")
        return fdp

    def parse_enum(self, enum) -> None:
        enum.name = self.next()
        self.expect("{")
        while (tok := self.next()) != "}":
            self.expect("=")
            enum.value.add(name=tok, number=int(self.next()))
            self.expect(";")

    def parse_message(self, msg) -> None:
        msg.name = self.next()
        self.expect("{")
        while (tok := self.next()) != "}":
            if tok == "message":
                self.parse_message(msg.nested_type.add())
            elif tok == "enum":
                self.parse_enum(msg.enum_type.add())
            elif tok in _LABELS:
                field = msg.field.add(label=_LABELS[tok])
                field.type_name = self.next()  # resolved later
                field.name = self.next()
                self.expect("=")
                field.number = int(self.next())
                tok = self.next()
                if tok == "[":
                    while True:
                        key = self.next()
                        self.expect("=")
                        value = self.next()
                        if key == "default":
                            field.default_value = value.strip('"')
                        elif key == "packed":
                            field.options.packed = value == "true"
                        else:
                            raise SchemaError(f"caffe.proto: option {key!r} not supported")
                        tok = self.next()
                        if tok == "]":
                            break
                    tok = self.next()
                if tok != ";":
                    raise SchemaError(f"caffe.proto: expected ';' after field {field.name}")
            else:
                raise SchemaError(f"caffe.proto: unexpected {tok!r} in message {msg.name}")


def _resolve(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    """Replace type names by scalar types or fully qualified references (proto scoping)."""
    kinds: dict[str, int] = {}

    def collect(prefix, msgs, enums):
        for e in enums:
            kinds[f"{prefix}.{e.name}"] = _FDP.TYPE_ENUM
        for m in msgs:
            kinds[f"{prefix}.{m.name}"] = _FDP.TYPE_MESSAGE
            collect(f"{prefix}.{m.name}", m.nested_type, m.enum_type)

    root = "." + fdp.package
    collect(root, fdp.message_type, fdp.enum_type)

    def fix(scope: str, msgs) -> None:
        for m in msgs:
            inner = f"{scope}.{m.name}"
            for f in m.field:
                name = f.type_name
                if name in _SCALARS:
                    f.type = _SCALARS[name]
                    f.ClearField("type_name")
                    continue
                parts = inner.split(".")
                while parts:
                    cand = ".".join(parts + [name])
                    if cand in kinds:
                        f.type, f.type_name = kinds[cand], cand
                        break
                    parts.pop()
                else:
                    raise SchemaError(f"caffe.proto: unknown type {name!r} of {m.name}.{f.name}")
            fix(inner, m.nested_type)

    fix(root, fdp.message_type)


def _load() -> SimpleNamespace:
    fdp = _Parser(_tokens(PROTO_PATH.read_text())).parse_file()
    _resolve(fdp)
    pool = descriptor_pool.DescriptorPool()
    file_desc = pool.Add(fdp)
    ns = SimpleNamespace(pool=pool, file_descriptor_proto=fdp)
    for name in fdp.message_type:
        desc = pool.FindMessageTypeByName(f"{fdp.package}.{name.name}")
        setattr(ns, name.name, message_factory.GetMessageClass(desc))
    for enum in fdp.enum_type:
        for value in enum.value:
            setattr(ns, value.name, value.number)
    del file_desc
    return ns


pb = _load()
"""Namespace of message classes: ``pb.NetParameter``, ``pb.SolverParameter``, ..."""
