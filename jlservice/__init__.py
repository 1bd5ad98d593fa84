"""jlservice: run JupyterLab on a server as a proper service."""

__version__ = "0.1.0"

EX_CONFIG = 78
"""Exit status for configuration errors (sysexits.h); systemd units stop restarting on it."""
