"""Label differential privacy by randomized response (RR), optionally with a prior from a first stage (RR-with-prior).

Only the training labels are randomized; the features are public under label DP, and validation/test labels stay
clean so the reported metrics measure the model against the truth.

k-ary randomized response keeps the true label with probability ``e^ε / (e^ε + k - 1)`` and otherwise reports one of
the other ``k - 1`` labels uniformly: ε-label-DP for every row. RR-with-prior (Ghazi et al., "Deep Learning with Label
Differential Privacy", NeurIPS 2021) restricts the answer to the ``k'`` labels a prior finds likeliest, choosing
``k'`` per row to maximise the chance of answering truthfully; it is ε-label-DP as long as a row's prior does not
depend on its own label. Here the prior comes from a first stage: the training rows are split in two, the first part
is randomized with plain RR, a TF-IDF + logistic-regression model fitted to those noisy labels gives the prior for
the second part, which is randomized with RR-with-prior. Each label is used once, so the whole set is ε-label-DP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from finexp.privacy.errors import PrivacyError

PRIORS = (None, "first_stage")


def keep_probability(epsilon: float, num_labels: int) -> float:
    """Probability that k-ary randomized response reports the true label."""
    if math.isinf(epsilon):
        return 1.0
    return math.exp(epsilon) / (math.exp(epsilon) + num_labels - 1)


def randomized_response(labels: np.ndarray, num_labels: int, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """k-ary randomized response: keep each label w.p. ``keep_probability``, else a uniform *other* label."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = rng.random(len(labels)) < keep_probability(epsilon, num_labels)
    # A uniform draw among the k-1 other labels: shift by 1..k-1 modulo k.
    other = (labels + rng.integers(1, num_labels, size=len(labels))) % num_labels
    return np.where(keep, labels, other)


def rr_with_prior(labels: np.ndarray, prior: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """RR-with-prior (RRTop-k): per row, RR restricted to the ``k'`` labels the prior ranks highest.

    Args:
        labels: true label ids, shape ``(n,)``.
        prior: label probabilities per row, shape ``(n, k)``; must not depend on the row's own label.
        epsilon: the label-DP budget.
        rng: random source.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n, k = prior.shape
    if math.isinf(epsilon):
        return labels.copy()
    order = np.argsort(-prior, axis=1, kind="stable")
    top_mass = np.cumsum(np.take_along_axis(prior, order, axis=1), axis=1)  # prior mass of the top-j labels
    sizes = np.arange(1, k + 1)
    truthful = math.exp(epsilon) / (math.exp(epsilon) + sizes - 1)  # P(keep) of RR over j labels
    best = np.argmax(top_mass * truthful, axis=1) + 1  # k' per row
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        top = order[i, : best[i]]
        if labels[i] in top:
            if rng.random() < truthful[best[i] - 1] or best[i] == 1:
                out[i] = labels[i]
            else:
                others = top[top != labels[i]]
                out[i] = others[rng.integers(len(others))]
        else:
            out[i] = top[rng.integers(len(top))]
    return out


class LabelRandomizer:
    """Randomizes training labels with ε-label-DP (a datamodule hook: ``labels, texts -> noisy labels``).

    Args:
        epsilon: the label-DP budget per row; ``inf`` leaves labels untouched.
        prior: None (plain k-ary RR) or ``first_stage`` (RR-with-prior, prior from a first-stage text model).
        first_stage_fraction: share of the training rows randomized with plain RR to fit the prior.
        seed: seed of the randomization (and of the stage split).
    """

    def __init__(
        self, epsilon: float, prior: str | None = None, first_stage_fraction: float = 0.5, seed: int = 0
    ) -> None:
        if not epsilon > 0:
            raise PrivacyError(f"privacy.epsilon={epsilon} is not allowed: must be > 0 (inf: no randomization)")
        if prior not in PRIORS:
            raise PrivacyError(f"privacy.prior={prior!r} is not allowed: choose one of null, first_stage")
        if not 0 < first_stage_fraction < 1:
            raise PrivacyError(f"privacy.first_stage_fraction={first_stage_fraction} is not allowed: must be in (0, 1)")
        self.epsilon = epsilon
        self.prior = prior
        self.first_stage_fraction = first_stage_fraction
        self.seed = seed
        self.stats: dict[str, Any] = {}

    def __call__(self, labels: Sequence[int], texts: Sequence[str], num_labels: int) -> list[int]:
        true = np.asarray(labels, dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        if self.prior is None or len(true) < 4:
            noisy = randomized_response(true, num_labels, self.epsilon, rng)
        else:
            noisy = self._two_stage(true, list(texts), num_labels, rng)
        self.stats = {
            "privacy/epsilon": float(self.epsilon),
            "privacy/label_flip_rate": float((noisy != true).mean()) if len(true) else 0.0,
            "privacy/label_flip_rate_rr": 1.0 - keep_probability(self.epsilon, num_labels),  # plain RR's rate
            "privacy/label_prior": self.prior or "none",
        }
        return noisy.tolist()

    def report(self) -> dict[str, Any]:
        """ε and the realized flip rate, for ``metrics.json``."""
        return dict(self.stats)

    def _two_stage(self, true: np.ndarray, texts: list[str], num_labels: int, rng: np.random.Generator) -> np.ndarray:
        order = rng.permutation(len(true))
        cut = max(2, round(len(true) * self.first_stage_fraction))
        first, second = order[:cut], order[cut:]
        noisy = np.empty_like(true)
        noisy[first] = randomized_response(true[first], num_labels, self.epsilon, rng)
        prior = first_stage_prior([texts[i] for i in first], noisy[first], [texts[i] for i in second], num_labels)
        noisy[second] = rr_with_prior(true[second], prior, self.epsilon, rng)
        return noisy


def first_stage_prior(
    train_texts: list[str], noisy_labels: np.ndarray, texts: list[str], num_labels: int
) -> np.ndarray:
    """Label probabilities for ``texts`` from a TF-IDF + logistic-regression model fitted on noisy labels.

    Classes the first stage never saw get a small floor, and every prior is smoothed towards uniform, so RR-with-prior
    never rules a label out entirely on the strength of a noisy first stage.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    uniform = np.full((len(texts), num_labels), 1.0 / num_labels)
    if len(set(noisy_labels.tolist())) < 2 or not texts:
        return uniform
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, max_features=50_000)
    features = vectorizer.fit_transform(train_texts)
    model = LogisticRegression(max_iter=1000, C=1.0).fit(features, noisy_labels)
    probs = np.zeros((len(texts), num_labels))
    probs[:, model.classes_] = model.predict_proba(vectorizer.transform(texts))
    return 0.9 * probs + 0.1 * uniform
