"""The privacy budget of a federated run with central DP (client-side clipping + server noise).

Each round every site's update is clipped to L2 norm C (Flower's `fixedclipping_mod`) and
the server adds Gaussian noise of std z * C / K to the mean of the K updates (Flower's
`DifferentialPrivacyClientSideFixedClipping`); the mean is unweighted when DP is on, so one
site changes it by at most C / K. That is the sampled Gaussian mechanism at sampling rate 1
(every site takes part in every round), composed over the rounds; Opacus's RDP accountant
converts it to (epsilon, delta). The guarantee is site-level: it covers everything one
hospital contributes, not only one patient.
"""

from __future__ import annotations

import math


def site_level_epsilon(noise_multiplier: float, rounds: int, delta: float, sample_rate: float = 1.0) -> float:
    """Epsilon after `rounds` rounds of the Gaussian mechanism with `noise_multiplier` (RDP, Opacus);
    infinity without noise."""
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta))
