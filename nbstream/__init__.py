"""The command layer: the ``nbstream`` console script and the local broker; the only code that
imports more than one stage."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nbstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
