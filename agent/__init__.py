"""tether-agent: the in-container server of tether."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tether")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"
