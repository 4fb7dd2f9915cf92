"""Every point of a ``-m`` sweep checked before the first one runs.

Hydra composes each point only when it launches it, so a bad value in the fifth point of a sweep used to
surface after four points had trained. :func:`check_points` expands the sweep's overrides as Hydra's
basic sweeper does (``selection.budget=8,16`` → two points), composes each point, and runs on it what a
single run checks first: :func:`deita.validate.validate_config` and :func:`deita.preflight.preflight` (data
sources and models; upstream stages are checked when each point runs, in its own run dir).
"""

from __future__ import annotations

import logging
import time

from deita.validate import ConfigError

log = logging.getLogger(__name__)


def expand_points(task_overrides: list[str]) -> list[list[str]]:
    """The override list of each point, in the order Hydra's basic sweeper launches them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(task_overrides), None)
    return [list(point) for batch in batches for point in batch]


def check_point(config_name: str, overrides: list[str]) -> None:
    """Compose one point and check it as a run would before its first stage (:class:`ConfigError` otherwise)."""
    from hydra import compose
    from hydra.errors import HydraException

    from deita.data.errors import DataError
    from deita.preflight import preflight
    from deita.strict import composition_error
    from deita.validate import validate_config

    try:
        cfg = compose(config_name=config_name, overrides=overrides)
    except HydraException as err:
        raise ConfigError(composition_error(err)) from None
    cfg.run_dir, cfg.recipe_name = "", "sweep-check"  # Hydra's runtime values do not exist before the launch
    try:
        validate_config(cfg)
        if not cfg.plan:
            preflight(cfg, upstreams=False)
    except DataError as err:
        raise ConfigError(str(err)) from None


def check_points(config_name: str, task_overrides: list[str]) -> int:
    """Check every point of the sweep ``task_overrides``; the number of points. Raises :class:`ConfigError`
    naming the first bad point (its index and overrides) and the key."""
    from deita.sweep import varying_overrides

    started = time.perf_counter()
    points = expand_points(task_overrides)
    swept = varying_overrides(points)
    for n, (overrides, varying) in enumerate(zip(points, swept), 1):
        try:
            check_point(config_name, overrides)
        except ConfigError as err:
            where = " ".join(f"{k}={v}" for k, v in varying.items()) or " ".join(overrides)
            raise ConfigError(f"sweep point {n} of {len(points)} ({where}): {err}; no point was run") from None
    log.info("sweep: all %d points checked in %.1f s", len(points), time.perf_counter() - started)
    return len(points)
