"""The ``scratchdet`` subcommands: one module each, ``add_arguments(parser)`` (the flags) and
``main(args) -> int`` (a call into the library and what it prints). The library parses no
arguments; ``cli.py`` maps each name to its module here."""
