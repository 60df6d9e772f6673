"""The orchestration layer: wires the libraries (models, diffusion, data, methods, eval) into runs.

pretrain (``pretrain.py``), checkpoint -> method (``loading.py``), the run directory and its
``metrics.json`` (``run_dir.py``), evaluation runners (``evaluate.py``), the generation / FID
stage (``generation.py``), comparison (``compare.py``), layer search, Lightning callbacks and the
CLI plumbing. Libraries never import this package (tests/test_architecture.py).
"""
