"""Ray's own output kept out of the way: its INFO lines, worker log streaming, Ray Data's bars.

A user of ``dce-batch enhance`` or ``dce-batch train`` waits for their images or their model, not
for Ray's cluster start-up lines and per-operator summaries. :func:`quiet_ray` returns the
settings that keep them out of sight unless ``verbose`` (Ray Data's ``ray-data.log`` file keeps
everything). Used by the enhancement job and by training; imports Ray only when applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RayQuietSettings", "quiet_ray"]


# Loggers whose INFO lines (cluster start, dashboard URL, Ray Data's execution plan and
# per-operator summaries) are noise for someone waiting for their images.
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")
_RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress"
# Its one warning, when a local Ray starts with token authentication on by default, tells how to
# turn it off; the clusters a quiet run starts are its own, for the length of the run.
_RAY_AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
# Environment variables a quiet apply() set (not the user), which a verbose one removes again.
_SET_BY_US: dict[str, str] = {}
# Levels of those loggers before a quiet apply(), restored by a verbose one.
_SAVED_LEVELS: dict[str, int] = {}


@dataclass(frozen=True)
class RayQuietSettings:
    """What to apply to Ray so that its output stays out of the way (or not, when verbose).

    Attributes:
        verbose: the flag these settings were made for.
        init_kwargs: extra keyword arguments for ``ray.init`` (the caller adds ``address`` etc.).
        log_level: level for Ray's Python loggers on the driver.
        data_context: attributes to set on ``ray.data.DataContext.get_current()``.
        environment: environment variables to set before Ray starts; they reach the workers of a
            local cluster (e.g. Ray's deduplication of repeated worker log lines).
    """

    verbose: bool
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    log_level: int = logging.INFO
    data_context: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)

    def apply(self) -> None:
        """Set the logger levels, Ray Data context and environment in this (driver) process.

        Call before ``ray.init(**settings.init_kwargs)`` and before building the dataset.
        """
        import os

        for key, value in self.environment.items():
            if key not in os.environ:
                os.environ[key] = value
                _SET_BY_US[key] = value
        if self.verbose:
            for key, value in list(_SET_BY_US.items()):
                if os.environ.get(key) == value and key not in self.environment:
                    del os.environ[key]
                _SET_BY_US.pop(key)
            # Undo an earlier quiet apply() in this process (logging is process-wide).
            _restore_ray_data_console()
            while _SAVED_LEVELS:
                name, level = _SAVED_LEVELS.popitem()
                logging.getLogger(name).setLevel(level)
            return
        from ray.data import DataContext

        _quiet_ray_data_console(self.log_level)
        # After importing ray.data: its import configures the "ray.data" logger.
        for name in _RAY_LOGGERS:
            logger = logging.getLogger(name)
            _SAVED_LEVELS.setdefault(name, logger.level)
            logger.setLevel(self.log_level)
        # Ray Data's progress logger: its one warning says that its bars are off, and ours replace
        # them, so that is no news.
        for name in (_RAY_DATA_PROGRESS_LOGGER, _RAY_AUTH_SETUP_LOGGER):
            _SAVED_LEVELS.setdefault(name, logging.getLogger(name).level)
            logging.getLogger(name).setLevel(max(self.log_level, logging.ERROR))
        context = DataContext.get_current()
        for key, value in self.data_context.items():
            if hasattr(context, key):  # fields come and go between Ray releases
                setattr(context, key, value)


def _quiet_ray_data_console(level: int) -> None:
    """Raise the level of Ray Data's console handler, keeping its file log (ray-data.log) whole.

    Ray Data re-creates its handlers from its logging config at every dataset execution, so a
    level set on a handler would not last. The documented way is a config file named by
    RAY_DATA_LOGGING_CONFIG; we write Ray's own default config with the console level raised.
    A config the user set is left alone.
    """
    import copy
    import hashlib
    import os
    import tempfile

    configured = os.environ.get("RAY_DATA_LOGGING_CONFIG")
    if configured and _OUR_CONFIG_MARK not in configured:
        return  # the user's own logging config
    try:
        import yaml
        from ray.data._internal import logging as data_logging  # the default config lives here
    except ImportError:
        return
    os.environ.pop("RAY_DATA_LOGGING_CONFIG", None)
    config = copy.deepcopy(data_logging._get_logging_config())
    for handler in config.get("handlers", {}).values():
        if str(handler.get("class", "")).endswith("PlainRayHandler"):  # the console handler
            handler["level"] = logging.getLevelName(level)
    text = yaml.safe_dump(config)
    # One file per content (not one per call): written next to itself, then renamed into place.
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"{_OUR_CONFIG_MARK}-{digest}.yaml")
    if not os.path.exists(path):
        handle, temporary = tempfile.mkstemp(prefix=f".{_OUR_CONFIG_MARK}-", dir=tempfile.gettempdir())
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    os.environ["RAY_DATA_LOGGING_CONFIG"] = path
    data_logging.configure_logging()


def _restore_ray_data_console() -> None:
    import os

    if _OUR_CONFIG_MARK in os.environ.get("RAY_DATA_LOGGING_CONFIG", ""):
        del os.environ["RAY_DATA_LOGGING_CONFIG"]
        try:
            from ray.data._internal import logging as data_logging
        except ImportError:
            return
        data_logging.configure_logging()


_OUR_CONFIG_MARK = "dce-batch-ray-data-logging"


def quiet_ray(verbose: bool) -> RayQuietSettings:
    """Settings that keep Ray's INFO lines and Ray Data's progress bars away unless ``verbose``.

    Not verbose: Ray logs warnings and errors only, worker stdout/stderr is not streamed to the
    driver (per-image failures reach the user through the manifest rows and :class:`Progress`;
    a crashed actor still raises on the driver with its traceback), and Ray Data draws no
    progress bars of its own (ours replaces them) and prints no execution plan or statistics.
    Verbose: Ray's defaults, unchanged.
    """
    if verbose:
        return RayQuietSettings(verbose=True, init_kwargs={"log_to_driver": True, "logging_level": logging.INFO})
    return RayQuietSettings(
        verbose=False,
        init_kwargs={"log_to_driver": False, "logging_level": logging.WARNING},
        log_level=logging.WARNING,
        data_context={
            "enable_progress_bars": False,
            "enable_operator_progress_bars": False,
            "print_on_execution_start": False,
            "verbose_stats_logs": False,
        },
        # No C++ log level (RAY_BACKEND_LOG_LEVEL): lowering it would hide real errors too. The
        # callers filter the driver's standard error instead (dce_batch.ray_stderr).
        environment={"RAY_DEDUP_LOGS": "1"},
    )
