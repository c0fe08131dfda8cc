"""Linear probe on frozen features: the paper's second column (it used a linear SVM)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 kind: str = "logistic", c: float = 1.0) -> float:
    """Fit a linear classifier on train features, return top-1 accuracy (%) on test features."""
    if kind == "svm":
        clf = LinearSVC(C=c, max_iter=5000)
    elif kind == "logistic":
        clf = LogisticRegression(C=c, max_iter=1000)
    else:
        raise ValueError(f"unknown probe {kind!r}: logistic | svm")
    clf.fit(train_x, train_y)
    return 100.0 * float((clf.predict(test_x) == test_y).mean())
