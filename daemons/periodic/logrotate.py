"""Log rotation (DESIGN.md section 3): ``var/log/<program>.log`` files past their size are
renamed to ``.log.1`` (older copies shifted to ``.2`` ... ``.N``, the oldest beyond N removed).
Every daemon logs through a WatchedFileHandler, which sees the rename at its next record and
opens a new ``.log``: no signal, no copy, no line lost. supervisord's ``.err`` files are its own
to rotate (stdout_logfile_maxbytes)."""

import os

from common.fileutil import fsync_dir


def rotate_logs(log_dir, max_bytes, keep):
    """Rotate every ``*.log`` in ``log_dir`` over ``max_bytes``, keeping ``keep`` old copies.
    Returns the names rotated."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    rotated = []
    for path in sorted(log_dir.glob("*.log")):
        try:
            if not path.is_file() or path.stat().st_size <= max_bytes:
                continue
        except FileNotFoundError:
            continue
        for old in path.parent.glob(f"{path.name}.*"):   # .keep and beyond (keep lowered)
            suffix = old.name[len(path.name) + 1:]
            if suffix.isdigit() and int(suffix) >= keep:
                old.unlink(missing_ok=True)
        for n in range(keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            try:
                os.rename(older, path.with_name(f"{path.name}.{n + 1}"))
            except FileNotFoundError:
                pass
        os.rename(path, path.with_name(f"{path.name}.1"))
        rotated.append(path.name)
    if rotated:
        fsync_dir(log_dir)
    return rotated
