"""Code generation: one module per op family, all emitting C against ``base.PRELUDE``."""
