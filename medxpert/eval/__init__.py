"""Measure: label agreement now; retrieval and report metrics as they arrive."""

from medxpert.eval.classification import LabelAgreement, label_agreement

__all__ = ["LabelAgreement", "label_agreement"]
