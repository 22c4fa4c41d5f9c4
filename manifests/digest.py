"""SHA-256 for content hashes (manifests, specs) without loading OpenSSL.

`hashlib` loads OpenSSL's libcrypto at import, 2-3 MB of mapped memory in the daemon, which hashes nothing else:
CPython's own SHA-256 gives the same digests. Artifacts and templates, which need md5/sha1/sha512 by name, still
use hashlib, imported only when a task has them.
"""
from __future__ import annotations

try:
    from _sha2 import sha256  # CPython >= 3.12
except ImportError:
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:  # a Python built without them
        from hashlib import sha256


def sha256_hex(data: bytes) -> str:
    return sha256(data).hexdigest()
