"""OmegaConf resolvers used by ``conf/config.yaml``."""

from omegaconf import OmegaConf


def override_dirname(overrides: str) -> str:
    """Directory name for a set of overrides: the overrides themselves, or ``default`` when none.

    Slashes (from paths in override values) become underscores so each run is one folder level.
    """
    return overrides.replace("/", "_") if overrides else "default"


def register_resolvers() -> None:
    """Register ``${deita_dirname:...}`` once per process."""
    if not OmegaConf.has_resolver("deita_dirname"):
        OmegaConf.register_new_resolver("deita_dirname", override_dirname)
