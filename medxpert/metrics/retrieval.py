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


# --- paired studies whose reports may repeat -------------------------------------------------
def group_match_ranks(
    similarity: np.ndarray, query_groups: np.ndarray, gallery_groups: np.ndarray
) -> np.ndarray:
    """1-based rank of each query's best match, where a match is any gallery item of the
    query's group (e.g. every study whose report has the same normalised text as the query's
    own: "No acute cardiopulmonary abnormality." written for many studies is one answer, not
    several). Ties with non-matches count against the match, as in `match_ranks`."""
    matches = query_groups[:, None] == gallery_groups[None, :]
    if not matches.any(axis=1).all():
        raise ValueError("every query needs at least one match in the gallery")
    best = np.where(matches, similarity, -np.inf).max(axis=1, keepdims=True)
    return ((similarity >= best) & ~matches).sum(axis=1) + 1


def group_recall_at_k(
    similarity: np.ndarray, query_groups: np.ndarray, gallery_groups: np.ndarray, k: int
) -> np.ndarray:
    """Per query: 1 when a match (same group) is among the top k."""
    return (group_match_ranks(similarity, query_groups, gallery_groups) <= k).astype(np.float64)


def group_reciprocal_rank(
    similarity: np.ndarray, query_groups: np.ndarray, gallery_groups: np.ndarray
) -> np.ndarray:
    return 1.0 / group_match_ranks(similarity, query_groups, gallery_groups)


def chance_group_recall(query_groups: np.ndarray, gallery_groups: np.ndarray, k: int) -> np.ndarray:
    """Per query: the recall@k of a random ranking, 1 − C(n−m, k) / C(n, k) for m matches
    among n gallery items."""
    n = len(gallery_groups)
    m = (query_groups[:, None] == gallery_groups[None, :]).sum(axis=1)
    k = min(k, n)
    miss = np.ones(len(m))
    for i in range(k):  # C(n−m, k) / C(n, k) = Π (n−m−i) / (n−i)
        miss *= np.clip(n - m - i, 0, None) / (n - i)
    return 1 - miss


def chance_group_mrr(query_groups: np.ndarray, gallery_groups: np.ndarray) -> np.ndarray:
    """Per query: the expected reciprocal rank of the first match in a random ranking."""
    n = len(gallery_groups)
    m = (query_groups[:, None] == gallery_groups[None, :]).sum(axis=1)
    ranks = np.arange(1, n + 1)
    out = np.empty(len(m))
    for value in np.unique(m):
        # P(first match at rank r) = C(n−r, m−1) / C(n, m), computed as a ratio of products
        first = np.zeros(n)
        survive = 1.0
        for r in ranks:
            left = n - r + 1
            first[r - 1] = survive * value / left
            survive *= (left - value) / left
            if survive <= 0:
                break
        out[m == value] = float((first / ranks).sum())
    return out


# --- the shape of an embedding space ---------------------------------------------------------
def mean_top1_cosine(vectors: np.ndarray) -> float:
    """Mean cosine of each vector to its nearest other vector (near 1: a collapsed space)."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return float(similarity.max(axis=1).mean())


def uniformity(vectors: np.ndarray, t: float = 2.0) -> float:
    """Wang & Isola's uniformity, log E exp(−t‖x − y‖²) over distinct pairs: 0 when every
    vector is the same, about −4 for points spread evenly on a high-dimensional sphere."""
    squared = np.clip(2 - 2 * (vectors @ vectors.T), 0, None)
    upper = np.triu_indices(len(vectors), k=1)
    values = -t * squared[upper]
    top = values.max()
    return float(top + np.log(np.mean(np.exp(values - top))))


def effective_rank(vectors: np.ndarray) -> float:
    """Roy & Vetterli's effective rank of the centred vectors: exp of the entropy of the
    normalised singular values (1 for a line, d for an isotropic cloud)."""
    singular = np.linalg.svd(vectors - vectors.mean(axis=0), compute_uv=False)
    p = singular / singular.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))
