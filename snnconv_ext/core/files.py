"""Files: the sha256 of a file and an atomic ``torch.save`` (zoo checkpoints, data checks, fine-tuning checkpoints)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["sha256_file", "save_atomic"]


def sha256_file(p: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_atomic(state: Any, file: str | os.PathLike) -> Path:
    """``torch.save`` into a temporary file next to ``file``, then rename it into place, so an interrupted
    run leaves either the old file or the complete new one, never a half-written checkpoint."""
    file = Path(file)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, file)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return file
