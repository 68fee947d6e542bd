"""Pattern-aware pruning: projections, ADMM, masked retraining, library extraction, reports."""

from .admm import ADMMState, run_admm
from .api import prune
from .describe import SparsityReport, describe
from .extraction import ExtractionResult, extract_library, plot_extraction
from .layers import LayerPlan, plan_layers, select_layers
from .masks import MaskEnforcer
from .projection import project_connectivity, project_model, project_pattern
from .recipe import PruneRecipe
from .spec import check_weights, spec_masks

__all__ = ["ADMMState", "ExtractionResult", "LayerPlan", "MaskEnforcer", "PruneRecipe", "SparsityReport",
           "check_weights", "describe", "extract_library", "plan_layers", "plot_extraction", "project_connectivity",
           "project_model", "project_pattern", "prune", "run_admm", "select_layers", "spec_masks"]

