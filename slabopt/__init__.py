"""slabopt: activation-aware sparse + low-rank ⊙ binary decomposition of weight matrices.

    Ŵ = S + L ⊙ B,   S sparse,  L = U Vᵀ of rank r,  B ∈ {±1}^{m×n} stored at 1 bit per entry,

minimising ‖(W − Ŵ) D‖_F² (D = diag of activation column norms) at an exact bit budget.
"""

from . import solvers as _solvers  # noqa: F401  (registers the built-in methods)
from .api import layer_budget, solve
from .budget import Budget, InfeasibleBudgetError, budget, storage_bits
from .level_quantizer import two_level_quantize
from .objective import Objectives, objective
from .patterns import Pattern
from .problem import Decomposition, Problem
from .quantized import QuantizedMatrix, QuantLayout
from .registry import methods, register_method
from .result import SolveResult, SparseMatrix
from .signs import pack_signs, unpack_signs
from .weight import dense_weight

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "Decomposition",
    "InfeasibleBudgetError",
    "Objectives",
    "Pattern",
    "Problem",
    "QuantLayout",
    "QuantizedMatrix",
    "SolveResult",
    "SparseMatrix",
    "__version__",
    "budget",
    "dense_weight",
    "layer_budget",
    "methods",
    "objective",
    "pack_signs",
    "register_method",
    "solve",
    "storage_bits",
    "two_level_quantize",
    "unpack_signs",
]
