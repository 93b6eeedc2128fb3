"""Central differential privacy of a federation and the check that a strategy averages: the coordinator clips each
node's update and noises their unweighted mean (Flower's server-side clipping wrappers, :class:`CentralDP`).

Used by the coordinator (:mod:`.server`), by the configuration that builds it (:mod:`.setup`) and by the
submitting side of a deployment (:mod:`.submit`), which reads central DP's settings back from the saved state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from finexp import FinexpError
from finexp.federated.client import ClientDP

# The metric central DP aggregates by: every node weighs 1 (set by the coordinator, not taken from the nodes), since
# a mean weighted by the nodes' row counts would give a large node more than its 1/n share of the sensitivity.
UNIT_WEIGHT = "finexp-central-dp-weight"


class _AdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, with the noise scaled to the bound that clipped this round's updates.

    flwr 1.32 updates the bound (for the next round) before it adds the noise, so the noise follows the new bound:
    when the bound shrinks, the mean gets up to ``exp(clip_norm_lr * target_clipped_quantile)`` times too little
    noise for the sensitivity of the updates it averaged. Here the noise uses the bound the updates were clipped to.
    """

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        self._clipped_to = self.clipping_norm
        return super().aggregate_train(server_round, replies)

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        updated, self.clipping_norm = self.clipping_norm, self._clipped_to
        try:
            return super()._add_noise_to_aggregated_arrays(aggregated)
        finally:
            self.clipping_norm = updated


@dataclass
class CentralDP:
    """Central DP (DP-FedAvg, McMahan et al. 2018): the coordinator clips each node's update to ``clipping_norm`` and
    adds Gaussian noise of ``noise_multiplier * clipping_norm / n`` to the unweighted mean of the ``n`` updates,
    with Flower's server-side clipping wrappers (``fixed``; ``adaptive``: Andrew et al. 2021, the bound follows the
    ``target_clipped_quantile`` of the update norms).

    The guarantee is per node (a node's whole contribution), against anyone who sees the global models; the
    coordinator itself sees the clear updates. The noise is drawn from fresh OS entropy, never from the run's seed:
    anyone holding the config could otherwise regenerate and subtract it.
    """

    clipping_norm: float
    noise_multiplier: float
    delta: float
    clipping: str = "fixed"
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    clipped_count_stddev: float | None = None

    def wrap(self, strategy: Strategy, num_sampled: int) -> Strategy:
        """``strategy`` inside Flower's server-side clipping wrapper, aggregating by :data:`UNIT_WEIGHT`."""
        check_averaging(strategy, "federated.central_dp")
        strategy.weighted_by_key = UNIT_WEIGHT
        if self.clipping == "fixed":
            return DifferentialPrivacyServerSideFixedClipping(
                strategy, self.noise_multiplier, self.clipping_norm, num_sampled
            )
        try:
            return _AdaptiveClipping(
                strategy,
                self.noise_multiplier,
                num_sampled,
                initial_clipping_norm=self.clipping_norm,
                target_clipped_quantile=self.target_clipped_quantile,
                clip_norm_lr=self.clip_norm_lr,
                clipped_count_stddev=self.clipped_count_stddev,
            )
        except ValueError as err:  # the noise of the clipped count takes part of the budget: it must be large enough
            raise FinexpError(
                f"federated.central_dp.clipping=adaptive: {err} Set federated.central_dp.clipped_count_stddev above "
                f"noise_multiplier / 2 = {self.noise_multiplier / 2:.3g}"
            ) from err

    def epsilon(self, rounds: int) -> float:
        """ε per node over ``rounds`` noisy means: one Gaussian mechanism of noise ``noise_multiplier`` per round
        (RDP accountant; sample rate 1: Flower samples a fixed number of nodes, not Poisson, so no amplification by
        sampling is claimed; adaptive clipping's noisy count is within the same budget, as Flower splits it)."""
        return ClientDP(self.clipping_norm, self.noise_multiplier).epsilon(self.delta, rounds)


def check_averaging(strategy: Strategy, key: str) -> None:
    """Refuse a strategy that does not average the updates (``key`` needs their mean, not each one)."""
    from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, MultiKrum, QFedAvg

    # All of Flower's strategies subclass FedAvg; these select, trim or re-weight instead of averaging.
    not_a_mean = (Bulyan, FedMedian, FedTrimmedAvg, MultiKrum, QFedAvg)
    if not isinstance(strategy, FedAvg) or isinstance(strategy, not_a_mean):
        raise FinexpError(
            f"{key} needs a strategy that averages updates (FedAvg, FedProx, FedAdam, ...); "
            f"{type(strategy).__name__} selects or trims them"
        )


@contextmanager
def fresh_noise() -> Iterator[None]:
    """NumPy's global generator (what Flower's DP wrappers draw from) seeded from OS entropy inside, restored after:
    the run seeds it (``pl.seed_everything``), and noise anyone with the config could replay protects nothing."""
    state = np.random.get_state()
    np.random.seed(None)
    try:
        yield
    finally:
        np.random.set_state(state)
