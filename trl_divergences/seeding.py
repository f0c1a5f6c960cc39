"""Seeds derived by hashing, so that independent random streams (per prompt, per epoch, per sampler chunk) never
overlap and are identical on every process."""

from __future__ import annotations

import hashlib


def derive_seed(namespace: str, seed: int, *indices: int) -> int:
    """A 63-bit seed from (namespace, seed, indices): the same inputs give the same seed on every process."""
    key = ":".join(str(i) for i in (seed, *indices))
    digest = hashlib.sha256(f"trl-divergences/{namespace}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
