"""Privacy: client-level differential privacy (DP-FedAvg) and its accounting.

* :mod:`~fedweave.privacy.dp` — clipping, fixed-denominator averaging and Gaussian noise
  (``privacy.dp.*``), configured by the extension :func:`configure_privacy`;
* :mod:`~fedweave.privacy.accountant` — ε from Opacus's RDP accountant.
"""

from .accountant import dp_epsilon
from .dp import DPClient, DPObserver, DPStrategy, configure_privacy, dp_noise_std

__all__ = ["dp_epsilon", "DPClient", "DPObserver", "DPStrategy", "configure_privacy", "dp_noise_std"]
