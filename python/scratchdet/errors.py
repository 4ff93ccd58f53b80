"""The one exception type users see: a one-line message naming the file, record or field."""


class ScratchDetError(Exception):
    """Raised for bad input or impossible requests; the CLI prints it as one line, no traceback."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
