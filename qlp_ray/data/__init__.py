"""Training data: capsules (finished tasks), request formats, per-domain dataset building,
the bundled samples, and picking which served requests are worth a label."""

from qlp_ray.data.capsules import (
    Capsule,
    bundled_domains,
    file_sha256,
    load_capsules,
    sample_path,
)
from qlp_ray.data.format import (
    chat_to_prompt,
    routing_text,
    to_prompt_completion,
)

__all__ = [
    "Capsule",
    "bundled_domains",
    "chat_to_prompt",
    "file_sha256",
    "load_capsules",
    "routing_text",
    "sample_path",
    "to_prompt_completion",
]
