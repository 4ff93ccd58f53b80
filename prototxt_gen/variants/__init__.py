"""The paper's networks as variants, one module per table, each readable beside it:

* ``base``: the ``Arch`` and ``Variant`` records every table fills in;
* ``schedules``: the solver schedules the tables share (SSD's, Table 2's, the released scripts');
* ``table1``: Table 1, SSD300 VGG16 with and without BatchNorm, three base lrs;
* ``table2``: Table 2, ResNet-18's first layers (the ResNet-18 variant maker Figure 3 shares);
* ``figure3``: Figure 3 (a)-(d);
* ``scratchdet300``: ScratchDet300 (Root-ResNet-34, paper and released twins) and Root-ResNet-18;
* ``ssd300``: SSD300 itself, the paper's baseline;
* ``demo``: the scaled-down nets of ``make demo`` on the synthetic shapes;
* ``mini_paper``: Table 1 and Figure 3 at CPU scale (``scratchdet mini-paper``).

``prototxt_gen/registry.py`` is their index (ids, lookup).
"""
