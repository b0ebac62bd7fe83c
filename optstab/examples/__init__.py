"""Runnable examples: ``python -m optstab.examples.<name>``.

six_optimizers: trains a small MLP with each of the FAQ's six optimizers.
"""
