"""Image collections: folders of class folders, Caltech-101, and the
query/gallery/distractor protocol.

Nothing here reads pixels: a collection is a list of paths with labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: File name endings taken as images when listing a folder (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
                  ".pgm", ".ppm", ".pbm", ".jp2")


class Collection(NamedTuple):
    """Labelled images.

    Attributes
    ----------
    paths : list of str
        One per image, sorted by class then file name.
    labels : ndarray of shape (n_images,), int64
        Index into ``classes``.
    classes : list of str
        Class (folder) names, sorted.
    """

    paths: list
    labels: np.ndarray
    classes: list

    def subset(self, indices) -> Collection:
        """The images at ``indices``, keeping the class list."""
        indices = np.asarray(indices, dtype=np.int64)
        return Collection([self.paths[i] for i in indices], self.labels[indices],
                          self.classes)


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether the file name ends like an image (see ``IMAGE_SUFFIXES``)."""
    return os.fspath(path).lower().endswith(IMAGE_SUFFIXES)


def image_folder(root: str | os.PathLike, *, exclude=()) -> Collection:
    """A folder of class folders: ``root/<class>/<image>``.

    Files whose names do not end like an image are ignored (Caltech-101 ships a
    stray ``BACKGROUND_Google/tmp``); so are files at the top level and hidden
    folders.

    Parameters
    ----------
    root : path
    exclude : iterable of str
        Class folders to leave out.

    Returns
    -------
    Collection

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder.
    ValueError
        If it holds no class folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; expected one sub-folder "
                                "of images per class")
    exclude = set(exclude)
    classes, paths, labels = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in exclude or folder.name.startswith("."):
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p))
        if not files:
            continue
        paths += [str(p) for p in files]
        labels += [len(classes)] * len(files)
        classes.append(folder.name)
    if not paths:
        raise ValueError(f"{root}: found no class folders with images in it")
    return Collection(paths, np.array(labels, dtype=np.int64), classes)
