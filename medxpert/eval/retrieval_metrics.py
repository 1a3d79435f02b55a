"""Retrieval metrics on a (queries × gallery) similarity matrix, per query (so they can be
bootstrapped) — pure NumPy.

Paired sets: query i's match is gallery item i. Labelled sets: a retrieved item is relevant
when it shares a positive label with the query ("No Finding" counts as a label).
"""

from __future__ import annotations

import numpy as np


def top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar gallery items per query, best first: (n_queries, k)."""
    k = min(k, similarity.shape[1])
    part = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(similarity, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def match_ranks(similarity: np.ndarray) -> np.ndarray:
    """1-based rank of each query's own match (gallery item i for query i). Ties count against
    the match (pessimistic), so a model that gives every item the same score ranks its
    matches last, not first."""
    own = np.diag(similarity)[:, None]
    return (similarity >= own).sum(axis=1)


def recall_at_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Per query: 1 when its match is among the top k, else 0 (paired sets)."""
    return (match_ranks(similarity) <= k).astype(np.float64)


def reciprocal_rank(similarity: np.ndarray) -> np.ndarray:
    """Per query: 1 / rank of its match (paired sets); the mean is the MRR."""
    return 1.0 / match_ranks(similarity)


def label_precision_at_k(
    similarity: np.ndarray,
    query_positives: np.ndarray,
    gallery_positives: np.ndarray,
    k: int,
    exclude_self: bool = False,
) -> np.ndarray:
    """Per query: the fraction of its top k that share a positive label with it.

    `*_positives` are boolean (n, labels). With `exclude_self` (query set = gallery set), a
    query never retrieves itself.
    """
    similarity = similarity.astype(np.float64, copy=True)
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    neighbours = top_k(similarity, k)
    shared = query_positives[:, None, :] & gallery_positives[neighbours]
    return shared.any(axis=2).mean(axis=1)


def class_precision_at_k(
    similarity: np.ndarray,
    query_class: np.ndarray,
    gallery_positives: np.ndarray,
    k: int,
    exclude_self: bool = False,
) -> np.ndarray:
    """Per query of a class-balanced protocol (MIMIC 5×200 style): the fraction of its top k
    that are positive for the query's class (`query_class` holds a label index per query)."""
    similarity = similarity.astype(np.float64, copy=True)
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    neighbours = top_k(similarity, k)
    return gallery_positives[neighbours, query_class[:, None]].mean(axis=1)


def chance_label_precision(
    query_positives: np.ndarray, gallery_positives: np.ndarray
) -> np.ndarray:
    """Per query: the expected precision of a random ranking (the share of relevant items)."""
    relevant = (query_positives.astype(np.int32) @ gallery_positives.T.astype(np.int32)) > 0
    return relevant.mean(axis=1)


def knn_label_scores(
    similarity: np.ndarray, gallery_labels: np.ndarray, k: int, temperature: float = 0.05
) -> np.ndarray:
    """Per query and label: the similarity-weighted share of its k nearest gallery items that
    are positive (weights softmax(similarity / temperature) over the k). (n_queries, labels)."""
    neighbours = top_k(similarity, k)
    weights = np.take_along_axis(similarity, neighbours, axis=1) / temperature
    weights = np.exp(weights - weights.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("qk,qkl->ql", weights, gallery_labels[neighbours].astype(np.float64))
