"""From a HU volume to a judged mask: logits (``forward``, on PyTorch or ONNX Runtime: ``ort``;
numpy resampling as torch's: ``resample``; any slice shape: ``fov``), thresholding and clean-up
(``postprocess``), the right/left split (``sides``), quality control (scores: ``qc_scores``; the
rule: ``qc``; of a mask made elsewhere: ``judge``), the one path from logits to judged lungs
(``segment``), one series (``predict``) and a cohort (the ``batch`` subpackage: ``discover``,
``plan``, ``tasks``, ``executors``, ``table``, ``command``).
"""
