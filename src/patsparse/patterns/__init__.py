"""Pattern libraries (which 3x3 masks a kernel may keep) and the theory behind Phase 2."""

from .library import (candidates, library_name, load_library, masks_from_positions, pattern_library,
                      positions, save_library, validate_library)

__all__ = ["candidates", "library_name", "load_library", "masks_from_positions", "pattern_library",
           "positions", "save_library", "validate_library"]
