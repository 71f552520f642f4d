"""atom3d: 3D atomic structure of CeO2 nanoparticles from single HRTEM images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("atom3d")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
