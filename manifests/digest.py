"""SHA-256 for content hashes (manifests, specs) and SHA-1 for alloc ids (uuid5), without loading OpenSSL.

`hashlib` loads OpenSSL's libcrypto at import, 2-3 MB of mapped memory in the daemon, which hashes nothing else:
CPython's own SHA-1 and SHA-256 give the same digests. Artifacts and templates, which need md5/sha1/sha512 by
name, still use hashlib, imported only when a task has them.
"""
from __future__ import annotations

import uuid

try:
    from _sha1 import sha1
except ImportError:  # a Python built without it
    from hashlib import sha1
try:
    from _sha2 import sha256  # CPython >= 3.12
except ImportError:
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:  # a Python built without them
        from hashlib import sha256


def sha256_hex(data: bytes) -> str:
    return sha256(data).hexdigest()


def uuid5(namespace: uuid.UUID, name: str) -> uuid.UUID:
    """uuid.uuid5, whose hashlib import would load OpenSSL (see above)."""
    return uuid.UUID(bytes=sha1(namespace.bytes + name.encode()).digest()[:16], version=5)
