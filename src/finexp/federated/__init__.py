"""Federated fine-tuning across institutions with Flower: ``federated=fedavg|fedprox`` (``finexp[federated]``).

:mod:`.partition` splits the training rows among simulated clients (IID, by a column, Dirichlet label skew; no
Flower needed); :mod:`.client` is a Flower ``NumPyClient`` training the run's LightningModule with Lightning, with
FedProx's proximal term and client-side DP; :mod:`.simulation` runs the rounds in this process with a Flower
strategy doing the configuring and the aggregation, and saves the global model as a finexp checkpoint.
"""

from __future__ import annotations

from finexp.federated.partition import (
    PARTITIONS,
    PartitionError,
    column_partition,
    dirichlet_partition,
    iid_partition,
    label_distributions,
    label_skew,
    partition_rows,
)

__all__ = [
    "PARTITIONS",
    "PartitionError",
    "column_partition",
    "dirichlet_partition",
    "iid_partition",
    "label_distributions",
    "label_skew",
    "partition_rows",
]
