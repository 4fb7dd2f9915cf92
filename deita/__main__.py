"""deita's command: ``deita recipe=NAME``, ``python -m deita recipe=NAME`` or
``accelerate launch -m deita recipe=NAME`` (``train.py`` in a checkout is the same entry).

The config tree ships inside the package (``deita/conf/``), so the command composes the same config from
any working directory; the run directory, the cache and the data paths stay relative to where you launch
(``paths.*``). Stages (select → sft → dpo → eval) run in order, each into its own artifact directory under
a deterministic run directory. See README.md for the config reference.
"""

import os
import sys
from pathlib import Path

import hydra
import hydra._internal.utils as hydra_utils
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig

from deita.config import register_configs
from deita.hydra_resolvers import register_resolvers

CONF_DIR = str(Path(__file__).resolve().parent / "conf")
"""The packaged config tree (groups and recipes), found by absolute path rather than from the cwd."""

register_resolvers()
register_configs()


def _one_line_composition_errors(run_and_report):
    """Hydra's ``run_and_report`` (it prints an error and exits 1), except that an error composing the
    command line (a key the schema lacks, a value of the wrong type, an unknown group option, an override
    it cannot parse) is one ``error:`` line naming the key, exit 2, like every other bad input.
    ``HYDRA_FULL_ERROR=1`` keeps Hydra's own report."""

    def wrapped(func):
        def guarded():
            try:
                return func()
            except (ConfigCompositionException, OverrideParseException) as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                from deita.strict import composition_error

                print(f"error: {composition_error(err)}", file=sys.stderr)
                sys.exit(2)

        return run_and_report(guarded)

    wrapped.deita_wrapped = True
    return wrapped


if not getattr(hydra_utils.run_and_report, "deita_wrapped", False):
    hydra_utils.run_and_report = _one_line_composition_errors(hydra_utils.run_and_report)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Validate the composed config, then plan or run the chosen stages."""
    from deita.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
