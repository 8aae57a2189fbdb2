"""The recipes' Hydra configurations (``<recipe>.yaml``, ``env/``, ``preset/``, ``variant/``),
shipped with the package: ``config_path="pkg://torchrl_mcmc.recipes.config"``."""
