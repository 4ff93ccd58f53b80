"""Caffe's formats: the schema, text/binary I/O, NetState filtering and shape inference."""
from .schema import pb  # noqa: F401
