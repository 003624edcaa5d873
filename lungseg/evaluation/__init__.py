"""Scores: Dice/HD95/MSD in mm (``metrics``), per-slice and per-patient evaluation (``evaluate``), the one
tuning rule for threshold and post-processing (``tuning``), cross-validation (``crossval``) against
the goals and the published range (``goals``), failures made from the cases (``failures``), the QC
calibration with its held-out protocol (``qc_calibrate``) and the report's view of it (``qc_view``);
dense lung simulated on held-out patients by a generator other than training's (``dense``).
"""
