"""Visual evidence for the paper's "image enhancement" claim (ECCV'20 section 7.2, Figure 5).

- :mod:`.saliency`: guided backpropagation, integrated gradients, inverted representation.
- :mod:`.metrics`: numbers that turn "sharper features, less noise" into something testable.
- :mod:`.figures`: the Figure-5-style grid, dense vs pattern-pruned on the same images.

Submodules are imported on use so that ``import patsparse.viz`` does not pull matplotlib.
"""

from __future__ import annotations

__all__ = ["saliency", "metrics", "figures"]
