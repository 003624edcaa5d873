"""From a HU volume to a judged mask: logits (``inference``, on PyTorch or ONNX Runtime: ``runtime``;
any slice shape: ``fov``), thresholding and clean-up (``postprocess``), the right/left split
(``sides``), quality control (``qc``), one series (``predict``) and a cohort (``batch``).
"""
