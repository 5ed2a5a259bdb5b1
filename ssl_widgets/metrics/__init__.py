"""Evaluation metrics adapted to pairs: insertion/deletion, average drop/increase, max-sensitivity."""
from .average_drop import average_drop_increase
from .common import MetricResult
from .insertion_deletion import insertion_deletion, trapezoid_auc
from .sensitivity import max_sensitivity

__all__ = ["MetricResult", "average_drop_increase", "insertion_deletion", "max_sensitivity", "trapezoid_auc"]
