"""Regime plugins and the science packages they drive. Kept import-light: training subprocesses import science packages from a workspace copy of this package."""
