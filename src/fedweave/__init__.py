"""fedweave: federated learning where global aggregation is the first-class citizen.

>>> import fedweave
>>> result = fedweave.run({"schedule": {"rounds": 5}})   # the built-in quickstart, shorter
>>> result.summary["final_accuracy"]
"""

from .config import Config, load_config
from .core.errors import ConfigError, DataError, DivergedError, FedweaveError, ModelError
from .experiment import RunResult, build_experiment, resume, run

__version__ = "0.1.0"

__all__ = [
    "Config", "load_config", "run", "resume", "build_experiment", "RunResult",
    "FedweaveError", "ConfigError", "DataError", "ModelError", "DivergedError", "__version__",
]
