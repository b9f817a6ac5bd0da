"""What a trial runs: losses, methods, nets, data, the training loop and probes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("contrastive-sweeps")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
