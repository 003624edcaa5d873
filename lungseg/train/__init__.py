"""Training: the loop, resumable and cached by run key (``train``; ``lungseg train``), and
multi-process data parallelism (``distributed``).
"""
