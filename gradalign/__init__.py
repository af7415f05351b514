"""gradalign: does on-policy distillation push a student toward success?

Public API:
    load_config(path) -> RunConfig          read and validate a TOML run config
    diagnose(config, out) -> Run            rollouts, branches, estimates, alignment tables
    load(run_dir) -> Tables                 the four tables of a run as pandas DataFrames
    analysis                                pure functions over those tables
    pipeline                                the stages diagnose runs, callable one by one
    GradalignError                          base of every error a user can fix (one-line message)
"""

__version__ = "0.1.0"

from gradalign.config import ConfigError, RunConfig, apply_overrides, config_from_dict, load_config  # noqa: E402
from gradalign.errors import GradalignError  # noqa: E402
from gradalign.tables import Manifest, Tables, load  # noqa: E402


def diagnose(config, out, **kwargs):
    """See `gradalign.engine.diagnose` (imported lazily: it pulls in torch)."""
    from gradalign.engine import diagnose as _diagnose

    return _diagnose(config, out, **kwargs)


__all__ = [
    "__version__", "ConfigError", "GradalignError", "Manifest", "RunConfig", "Tables", "apply_overrides", "config_from_dict",
    "diagnose", "load", "load_config",
]
