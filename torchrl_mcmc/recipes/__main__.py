"""``python -m torchrl_mcmc.recipes <recipe> [override ...]``: see
:func:`torchrl_mcmc.recipes.cli.main`."""

from torchrl_mcmc.recipes.cli import main

if __name__ == "__main__":
    main()
