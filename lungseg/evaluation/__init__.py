"""Scores: Dice/HD95/MSD in mm (``metrics``), per-slice and per-patient evaluation (``evaluate``), the one
tuning rule for threshold and post-processing (``tuning``), cross-validation (``crossval``) against
the goals and the published range (``goals``), failures made from
the cases (``failures``) and the QC calibration with its held-out protocol (``qc_calibrate``); dense lung
simulated on held-out patients by a generator other than training's (``dense``).
"""
