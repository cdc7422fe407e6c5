"""Evaluation: the paper's metrics with their intervals and tests, the evaluation writer, five-fold
cross-validation, and the report (tables, figures, published numbers). Command line: ``python -m bundle.evaluation``."""
