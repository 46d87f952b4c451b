"""Downloads that verify checksums and never leave a half-written file behind."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

from vit_rpe.utils.errors import DataError

log = logging.getLogger(__name__)


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(urls: Sequence[str], dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
    """Fetch the first mirror that answers into ``dest``, atomically, checking ``md5``.

    The bytes go to a temporary file in the same folder and are renamed into place only once
    complete and verified, so an interrupted or corrupt download leaves nothing behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            log.info("downloading %s", url)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while block := response.read(1 << 20):
                    out.write(block)
            if md5 is not None and (got := md5sum(tmp)) != md5:
                raise OSError(f"checksum mismatch (md5 {got}, expected {md5})")
            os.replace(tmp, dest)
            return dest
        except Exception as err:
            errors.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))


def extract_tar(archive: Path, dest: Path, folder: str) -> Path:
    """Extract the top-level ``folder`` of a tar archive to ``dest/folder``, safely and atomically.

    Members must be plain files or folders inside ``folder`` (no absolute paths, ``..`` or links).
    Everything goes to a temporary folder first and is renamed into place once complete.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{folder}.", suffix=".extract"))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                parts = Path(member.name).parts
                if (
                    Path(member.name).is_absolute()
                    or ".." in parts
                    or not parts
                    or parts[0] != folder
                    or not (member.isfile() or member.isdir())
                ):
                    raise DataError(
                        f"{archive} holds an unexpected entry {member.name!r}: delete it and download again"
                    )
            tar.extractall(tmp, members=members, filter="data")
        os.replace(tmp / folder, dest / folder)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(
            f"{archive} is truncated or corrupt ({err}): delete it and download it again"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / folder
