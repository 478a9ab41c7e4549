"""Tools and test support that ship with the repository, not the package:
the parity check of a converted checkpoint (``parity.py``), the reference
implementations it compares against (``reference/``), data sets in real
on-disk formats made from nothing (``synthetic.py``), the demo, and plots."""
