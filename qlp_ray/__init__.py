"""qlp_ray: one base model, a fleet of signed LoRA adapters, routed and improved on Ray."""

from qlp_ray.core.config import QLPConfig, load_config
from qlp_ray.core.errors import QLPError

__version__ = "0.1.0"

__all__ = ["QLPConfig", "QLPError", "load_config", "__version__"]
