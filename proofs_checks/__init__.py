"""Numerical checks of every statement of docs/formulation.md §6: ``python -m proofs_checks``."""
