"""File content hashes, shared by the dataset index and the model checks."""

import hashlib

__all__ = ["file_sha256"]


def file_sha256(path, chunk_size=1 << 20):
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
