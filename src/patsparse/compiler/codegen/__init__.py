"""Code generation: one module per op family, all emitting C against the prelude a target renders
(``base.prelude_c``); kernels.py says which family runs which node."""
