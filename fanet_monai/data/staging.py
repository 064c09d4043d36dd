"""Writing ``prepare``'s outputs safely: generated folders staged under temporary names and renamed into place
only when every check passed (the datalist JSON is written atomically by :func:`fanet_monai.io.write_json`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image

__all__ = ["StagedFolders", "write_png"]


class StagedFolders:
    """Folders generated next to ``OUT.json``: written under temporary names, renamed into place on commit."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.created_out_dir = False
        self.dirs: Dict[Path, Path] = {}

    def folder(self, name: str) -> Path:
        if not self.out_dir.exists():
            self.out_dir.mkdir(parents=True)
            self.created_out_dir = True
        final = self.out_dir / name
        if final not in self.dirs:
            self.dirs[final] = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.out_dir))
        return self.dirs[final]

    def final(self, path: str) -> str:
        for final, temp in self.dirs.items():
            if path.startswith(str(temp) + os.sep):
                return str(final) + path[len(str(temp)):]
        return path

    def commit(self) -> None:
        for final, temp in self.dirs.items():
            if final.exists():
                shutil.rmtree(final)
            os.replace(temp, final)
        self.dirs = {}

    def discard(self) -> None:
        for temp in self.dirs.values():
            shutil.rmtree(temp, ignore_errors=True)
        self.dirs = {}
        if self.created_out_dir:
            try:
                self.out_dir.rmdir()
            except OSError:
                pass


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
