"""Training: the loop, resumable and cached by run key (``train``; ``python -m lungseg.train``), and
multi-process data parallelism (``distributed``).
"""
