"""SHA-256 for content hashes (manifests, specs) and SHA-1 for alloc ids (uuid5), without loading OpenSSL or uuid.

`hashlib` loads OpenSSL's libcrypto at import, 2-3 MB of mapped memory in the daemon, which hashes nothing else:
CPython's own SHA-1 and SHA-256 give the same digests. Artifacts and templates, which need md5/sha1/sha512 by
name, still use hashlib, imported only when a task has them. The uuid module (and the platform module it
imports) would cost the daemon 0.1 MB to format one kind of string.
"""
from __future__ import annotations

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


def uuid5(namespace: str, name: str) -> str:
    """str(uuid.uuid5(uuid.UUID(namespace), name)): RFC 4122 name-based UUID, version 5, in the canonical form."""
    b = bytearray(sha1(bytes.fromhex(namespace.replace("-", "")) + name.encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
