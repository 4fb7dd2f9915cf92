"""deita's single entry point: ``python train.py recipe=NAME`` or ``accelerate launch train.py recipe=NAME``.

Stages (select → sft → dpo → eval) run in order, each into its own artifact directory under a
deterministic run directory. See README.md for the config reference.
"""

import hydra
from omegaconf import DictConfig

from deita.config import register_configs
from deita.hydra_resolvers import register_resolvers

register_resolvers()
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Validate the composed config, then plan or run the chosen stages."""
    from deita.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
