"""Generators of Caffe SSD prototxts for every network variant of the ScratchDet paper.

``registry`` names the variants (``get(id)``, ``all_variants()``); ``build`` turns one into its
train/test/deploy nets, solver and train.sh (``build_variant``, ``write_variant``); ``cli`` is
``scratchdet gen``. The nets are assembled with ``netspec`` (Caffe's NetSpec semantics) from
``blocks``, ``backbones``, ``head`` and ``data_layers``; ``solver`` and ``jobs`` write the rest;
``labelmaps`` writes the label maps under ``data/``.
"""
