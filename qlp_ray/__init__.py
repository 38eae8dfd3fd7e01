"""qlp_ray: train LoRA adapters of one base model on Ray Train, sign them into a registry,
serve them behind an OpenAI-compatible API on Ray Serve with a skill-aware router, and
improve them from production feedback.

The public names here are the typed configuration (:class:`QLPConfig`, :func:`load_config`)
and :class:`QLPError`, the root of every error qlp_ray raises. The command line is ``qlp``
(:mod:`qlp_ray.cli`); the Python client of the HTTP API is :mod:`qlp_ray.client`.
"""

from qlp_ray.core.config import QLPConfig, load_config
from qlp_ray.core.errors import QLPError

__version__ = "0.1.0"

__all__ = ["QLPConfig", "QLPError", "load_config", "__version__"]
