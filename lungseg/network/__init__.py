"""The model and its recipe: the UNet (``model``), the training config and profiles (``config``), the
data preprocessing and slice sampling (``data``), the loss (``losses``), the layout/precision probe
(``speed``), the run registry with the one checkpoint loader (``runs``) and which runs a report used
and which model a command uses (``selection``). Below both training and
inference: ``predict`` needs this, never ``lungseg.train``.
Simulated dense lung for training (``disease``).
"""
