"""toyregime: a regime plugin and its science package (scaffolded by `agent new-regime`).

Kept import-light: the training subprocess and the registry import it.
"""
