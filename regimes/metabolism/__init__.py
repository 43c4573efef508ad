"""Metabolism science package: simulator, models, training, metrics and plots.

Kept import-free on purpose: the loop imports regime plugins cheaply, and the
training subprocess imports the heavy modules (torch) itself.
"""
