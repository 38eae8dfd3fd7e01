"""The ``qlp`` command line: one module per command group, wired in :mod:`qlp_ray.cli.app`."""

from qlp_ray.cli.app import app, run
from qlp_ray.cli.common import console, err_console, fail, get_config, state

__all__ = ["app", "console", "err_console", "fail", "get_config", "run", "state"]
