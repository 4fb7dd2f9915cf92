"""deita's command: ``deita recipe=NAME``, ``python -m deita recipe=NAME`` or
``accelerate launch -m deita recipe=NAME`` (``train.py`` in a checkout is the same entry).

The config tree ships inside the package (``deita/conf/``), so the command composes the same config from
any working directory; the run directory, the cache and the data paths stay relative to where you launch
(``paths.*``). Stages (select → sft → dpo → eval) run in order, each into its own artifact directory under
a deterministic run directory. See README.md for the config reference.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from deita.config import register_configs
from deita.hydra_resolvers import register_resolvers

CONF_DIR = str(Path(__file__).resolve().parent / "conf")
"""The packaged config tree (groups and recipes), found by absolute path rather than from the cwd."""

register_resolvers()
register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Validate the composed config, then plan or run the chosen stages."""
    from deita.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
