"""``python -m qlp_ray`` is the ``qlp`` command."""

from qlp_ray.cli import run

run()
