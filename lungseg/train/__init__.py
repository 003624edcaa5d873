"""Training: the loop, resumable and cached by run key (``loop``; ``lungseg train``), and
multi-process data parallelism (``distributed``).
"""
