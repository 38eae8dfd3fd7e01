"""A verified private copy of an adapter version, for engines that read files lazily.

vLLM reads an adapter's files when a request first needs them (and again after its own
cache dropped them), long after the registry verified the version directory. A file
swapped in between would be served unverified. :func:`verified_copy` closes that window:
the registry verifies the version (policy, audit row), the files are copied into a
directory only this process writes (mode 0700), and the *copy* is verified again against
the signed manifest. The engine is only ever pointed at the copy.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from qlp_ray.registry.signing import trusted_public_keys
from qlp_ray.registry.store import Registry
from qlp_ray.registry.verify import check_signed, check_unsigned

logger = logging.getLogger(__name__)


def verified_copy(
    registry: Registry,
    adapter_id: str,
    version: int | None,
    dest: Path,
    *,
    expected_base_model: str | None = None,
) -> Path:
    """Verify ``adapter_id`` v``version``, copy it to ``dest`` (must not exist) and verify
    the copy; returns ``dest``. ``SignatureError`` names what failed; ``dest`` is removed
    when the copy does not verify."""
    record = registry.verify(adapter_id, version, expected_base_model=expected_base_model)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # symlinks are copied as links, and the check below refuses them
    shutil.copytree(record.path, dest, symlinks=True)
    dest.chmod(0o700)
    try:
        if record.signed:
            trusted = trusted_public_keys(registry.cfg)
            check_signed(adapter_id, record.version, dest, trusted, expected_base_model)
        else:  # allowed unsigned (registry.require_signature false): the checks that remain
            check_unsigned(adapter_id, record.version, dest, expected_base_model)
    except Exception:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    logger.info("verified private copy of %s v%d at %s", adapter_id, record.version, dest)
    return dest


__all__ = ["verified_copy"]
