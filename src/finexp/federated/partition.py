"""Split the training rows among simulated institutions: IID, by a column, or with Dirichlet label skew.

Every function returns one array of row indices per client; together they hold every row exactly once. Nothing here
needs Flower.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from finexp import FinexpError

PARTITIONS = ("iid", "column", "dirichlet")


class PartitionError(FinexpError):
    """A partition that cannot be made from these rows (too few rows or values for the clients asked for)."""


def iid_partition(labels: Sequence[int], num_clients: int, seed: int) -> list[np.ndarray]:
    """Stratified IID split: each class is shuffled and dealt round-robin, so every client sees the overall label mix
    and client sizes differ by at most one row."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    parts = [np.sort(order[i::num_clients]) for i in range(num_clients)]
    _require_rows(parts, 1, "iid")
    return parts


def dirichlet_partition(
    labels: Sequence[int], num_clients: int, alpha: float, seed: int, min_rows: int = 10, max_tries: int = 100
) -> list[np.ndarray]:
    """Label skew: for each class, the shares going to the clients are drawn from Dirichlet(alpha, ..., alpha).

    Low ``alpha`` gives each client a few dominant classes (0.1: nearly one class each); high ``alpha`` approaches IID.
    The draw is repeated (same seeded generator) until every client holds at least ``min_rows`` rows.

    Raises:
        PartitionError: no draw in ``max_tries`` gave every client ``min_rows`` rows.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for client, piece in enumerate(np.split(rows, cuts)):
                buckets[client].append(piece)
        parts = [np.sort(np.concatenate(b)) for b in buckets]
        if min(len(p) for p in parts) >= min_rows:
            return parts
    raise PartitionError(
        f"federated.partition=dirichlet: no draw in {max_tries} gave each of {num_clients} clients "
        f"federated.min_rows={min_rows} of {len(labels)} rows at federated.alpha={alpha}; "
        "lower min_rows or num_clients, or raise alpha"
    )


def column_partition(groups: Sequence[Hashable], num_clients: int, column: str = "column") -> list[np.ndarray]:
    """One client per value of a column (a region, a lender): the rows of one value always stay together.

    With more values than clients, values are packed largest first onto the client with the fewest rows so far.

    Raises:
        PartitionError: fewer distinct values than clients.
    """
    values = np.asarray([str(g) for g in groups], dtype=object)
    names, counts = np.unique(values, return_counts=True)
    if len(names) < num_clients:
        raise PartitionError(
            f"federated.partition_column={column!r} has {len(names)} value(s) ({', '.join(map(str, names))}) "
            f"but federated.num_clients={num_clients}; set num_clients <= {len(names)}"
        )
    loads = np.zeros(num_clients, dtype=int)
    members: list[list[str]] = [[] for _ in range(num_clients)]
    for i in np.argsort(-counts, kind="stable"):
        client = int(np.argmin(loads))
        members[client].append(names[i])
        loads[client] += counts[i]
    return [np.flatnonzero(np.isin(values, m)) for m in members]


def client_values(groups: Sequence[Hashable], parts: Sequence[np.ndarray]) -> list[list[str]]:
    """The column values each client of a :func:`column_partition` holds (its institution names)."""
    values = np.asarray([str(g) for g in groups], dtype=object)
    return [sorted(set(values[p].tolist())) for p in parts]


def partition_rows(
    labels: Sequence[int],
    num_clients: int,
    method: str = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    groups: Sequence[Hashable] | None = None,
    column: str | None = None,
    min_rows: int = 10,
) -> list[np.ndarray]:
    """Row indices per client by ``method`` (``iid``, ``column`` with ``groups``, ``dirichlet`` with ``alpha``)."""
    if method == "iid":
        return iid_partition(labels, num_clients, seed)
    if method == "dirichlet":
        return dirichlet_partition(labels, num_clients, alpha, seed, min_rows)
    if method == "column":
        if groups is None:
            raise PartitionError("federated.partition=column needs the values of federated.partition_column")
        return column_partition(groups, num_clients, column or "column")
    raise PartitionError(f"federated.partition={method!r} is not allowed: choose one of {', '.join(PARTITIONS)}")


def label_distributions(labels: Sequence[int], parts: Sequence[np.ndarray], num_labels: int) -> np.ndarray:
    """Each client's label distribution (rows: clients, columns: classes; rows sum to one)."""
    labels = np.asarray(labels)
    counts = np.stack([np.bincount(labels[p], minlength=num_labels) for p in parts]).astype(float)
    return counts / counts.sum(axis=1, keepdims=True).clip(min=1)


def label_skew(labels: Sequence[int], parts: Sequence[np.ndarray], num_labels: int) -> float:
    """Mean total-variation distance between each client's label distribution and the overall one (0: IID)."""
    overall = np.bincount(np.asarray(labels), minlength=num_labels) / max(1, len(labels))
    per_client = label_distributions(labels, parts, num_labels)
    return float(0.5 * np.abs(per_client - overall).sum(axis=1).mean())


def _require_rows(parts: Sequence[np.ndarray], minimum: int, method: str) -> None:
    if min(len(p) for p in parts) < minimum:
        raise PartitionError(f"federated.partition={method}: a client got no rows; use fewer clients or more data")
