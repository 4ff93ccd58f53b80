"""The one exception type users see (a one-line message naming the file, record or field), and the
exit statuses the commands share."""

EXIT_BAD_INPUT = 2        # a ScratchDetError: bad input or an impossible request
EXIT_DIVERGED = 3         # training stopped on a non-finite loss (recorded as NAN, as the paper's Table 1)
EXIT_INTERRUPTED = 130    # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143     # SIGTERM (128 + SIGTERM): timeout, SLURM, kill


class ScratchDetError(Exception):
    """Raised for bad input or impossible requests; the CLI prints it as one line, no traceback."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def plain(value) -> str:
    """A number, or a sequence of numbers, as a message should show it: ``236``, ``0.1``, ``nan``,
    ``(1, 2, 236, nan)`` -- never numpy's ``np.float32(236.0)`` nor float32 noise (``0.10000000149``)."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "ndim") and getattr(value, "ndim", 0) > 0):
        return "(" + ", ".join(plain(v) for v in value) + ")"
    if isinstance(value, int) or type(value).__name__.startswith(("int", "uint")):
        return str(int(value))
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if f != f or f in (float("inf"), float("-inf")):
        return str(f)                       # nan, inf, -inf
    return f"{f:.7g}"                        # 236, 0.1, 1e+38: float32's 7 significant digits
