"""The baseline a text classifier is scored beside: scikit-learn TF-IDF + LogisticRegression on the same split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def tfidf_logistic_probabilities(cache_dir: Path, c_grid: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(test probabilities (N, K) float64, test labels, the C chosen) of TF-IDF + LogisticRegression.

    Fitted on the train split's texts; C is the one of `c_grid` with the best val accuracy (the smaller on ties),
    as the model's best epoch is chosen on val. Classes the train split lacks get probability 0.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from trainflow.tasks.text_classification_cache import read_token_cache_attrs, split_texts

    num_classes = len(read_token_cache_attrs(cache_dir)["info"]["class_names"])
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (split_texts(cache_dir, s) for s in ("train", "val", "test"))
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
    train_features = vectorizer.fit_transform(train_x)
    fitted = {c: LogisticRegression(C=c, max_iter=2000).fit(train_features, train_y) for c in c_grid}
    if len(val_x):
        val_features = vectorizer.transform(val_x)
        chosen = max(c_grid, key=lambda c: (float(np.mean(fitted[c].predict(val_features) == val_y)), -c))
    else:
        chosen = 1.0 if 1.0 in fitted else c_grid[0]
    probabilities = np.zeros((len(test_x), num_classes))
    probabilities[:, fitted[chosen].classes_] = fitted[chosen].predict_proba(vectorizer.transform(test_x))
    return torch.from_numpy(probabilities), torch.from_numpy(np.asarray(test_y, dtype=np.int64)), chosen
