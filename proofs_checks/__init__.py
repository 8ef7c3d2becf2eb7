"""Numerical checks of every statement of SPEC §4: ``python -m proofs_checks``."""
