"""Trust reports: evaluation metrics, calibration, thresholds, fairness, explanations and the run's model card.

Library code on plain arrays (``metrics``, ``fairness``, ``attributions``, ``plots``, ``model_card``) plus the glue that
the entry points call (:func:`~finexp.analysis.pipeline.analyze`).
"""

from finexp.analysis.pipeline import AnalysisOptions, Predictions, analyze, predict

__all__ = ["AnalysisOptions", "Predictions", "analyze", "predict"]
