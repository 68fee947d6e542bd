"""Side-by-side benchmarking of patsparse against the engines a user would pick instead.

Layout: ``harness`` runs each engine in its own worker process (``worker``, speaking
``protocol`` over pipes) and times them interleaved; ``engines`` holds one small module per
engine behind the ``Engine`` interface; ``model`` turns a PyTorch model, a saved patsparse
model, a zoo name or an ONNX file into the files the workers load; ``report`` prints tables
and draws plots.

Nothing here imports torch at package import time: the worker also runs inside other
interpreters (DeepSparse's own venv) where torch does not exist.
"""
