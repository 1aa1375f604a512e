"""Input drift: do the served inputs still look like the training data?

Inputs and training examples are embedded with the embedded MiniLM sentence encoder (hone.kb.embed), and
compared with the maximum mean discrepancy (Gretton et al., JMLR 2012): an RBF kernel whose bandwidth is
the median pairwise distance of the pooled sample (the median heuristic), the unbiased MMD² estimate, and
a permutation test for its p-value (the share of random relabellings of the pooled sample with an MMD² at
least as large). Each input's distance to its nearest training example finds the ones furthest from
anything the model was taught. For label tasks the predicted-label distribution is compared with the
training labels' by total variation distance, with a permutation p-value too.

Why not `evidently` (docs/decisions.md): it is a dashboard suite (~30 packages with pandas, plotly,
scipy...) whose embedding drift test is a classifier or a share of drifted components with no MMD
p-value; the statistic here is ~40 lines of numpy.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

PERMUTATIONS = 1000     # p-values resolve to 1/1001; a 0.01 alarm needs a few hundred at least
MAX_SAMPLE = 1000       # per side: the kernel matrix is (2 x MAX_SAMPLE)², 16 MB in float32


@dataclass
class MMDResult:
    mmd2: float          # unbiased estimate; ~0 when both samples come from one distribution
    p_value: float
    bandwidth: float     # the RBF kernel's sigma (median pairwise distance)
    n_reference: int
    n_inputs: int


def mmd_test(reference: np.ndarray, inputs: np.ndarray, permutations: int = PERMUTATIONS,
             seed: int = 0) -> MMDResult:
    """Two-sample MMD test of `inputs` against `reference` (rows are embeddings)."""
    rng = np.random.default_rng(seed)
    reference, inputs = _subsample(reference, rng), _subsample(inputs, rng)
    pooled = np.concatenate([reference, inputs]).astype(np.float64)
    m, n = len(reference), len(inputs)
    sq = np.maximum((pooled ** 2).sum(1)[:, None] + (pooled ** 2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0.0)
    off_diagonal = sq[np.triu_indices(len(pooled), 1)]
    sigma = float(np.sqrt(np.median(off_diagonal))) or 1.0
    kernel = np.exp(-sq / (2 * sigma ** 2))
    # every relabelling at once: column j of `labels` marks which pooled rows play the reference
    labels = np.zeros((m + n, permutations + 1))
    labels[:m, 0] = 1
    for j in range(1, permutations + 1):
        labels[rng.permutation(m + n)[:m], j] = 1
    stats = _mmd2(kernel, labels, m, n)
    p_value = float((1 + np.sum(stats[1:] >= stats[0])) / (1 + permutations))
    return MMDResult(float(stats[0]), p_value, sigma, m, n)


def _mmd2(kernel: np.ndarray, labels: np.ndarray, m: int, n: int) -> np.ndarray:
    """Unbiased MMD² for each labelling column (the RBF kernel's diagonal is 1)."""
    total = kernel.sum()
    k_ref = labels.T @ kernel                       # (P, N): row sums restricted to the reference rows
    xx = np.einsum("pn,np->p", k_ref, labels)       # sum over reference x reference
    xy = k_ref.sum(1) - xx                          # reference x inputs
    yy = total - xx - 2 * xy                        # inputs x inputs
    return (xx - m) / (m * (m - 1)) + (yy - n) / (n * (n - 1)) - 2 * xy / (m * n)


def _subsample(rows: np.ndarray, rng) -> np.ndarray:
    return rows if len(rows) <= MAX_SAMPLE else rows[rng.choice(len(rows), MAX_SAMPLE, replace=False)]


@dataclass
class Outlier:
    """A served input far from the training data, with the training example nearest to it."""
    input: str
    similarity: float          # cosine similarity to its nearest training example (1 = identical)
    nearest: str


def furthest_inputs(inputs: list[str], input_vectors: np.ndarray, reference: list[str],
                    reference_vectors: np.ndarray, limit: int = 5) -> list[Outlier]:
    """The `limit` inputs whose nearest training example is least similar (unit vectors: dot = cosine)."""
    if not inputs or not reference:
        return []
    similarity = input_vectors @ reference_vectors.T
    nearest = similarity.argmax(1)
    best = similarity[np.arange(len(inputs)), nearest]
    seen: set[str] = set()
    out = []
    for i in np.argsort(best):
        if inputs[i] in seen:
            continue
        seen.add(inputs[i])
        out.append(Outlier(inputs[i], round(float(best[i]), 4), reference[int(nearest[i])]))
        if len(out) == limit:
            break
    return out


@dataclass
class LabelShift:
    """The predicted-label distribution of the served answers against the training labels."""
    total_variation: float           # half the L1 distance between the two distributions; 0..1
    p_value: float
    training: dict[str, float] = field(default_factory=dict)
    served: dict[str, float] = field(default_factory=dict)


OTHER = "(other)"   # an answer that is none of the training labels


def label_shift(training_labels: list[str], predicted: list[str], permutations: int = PERMUTATIONS,
                seed: int = 0) -> LabelShift:
    """Total variation between the label distributions, with a permutation p-value."""
    known = set(training_labels)
    predicted = [p if p in known else OTHER for p in predicted]
    names = sorted(known | set(predicted))
    index = {name: i for i, name in enumerate(names)}
    pooled = np.array([index[x] for x in training_labels + predicted])
    m = len(training_labels)

    def tv(codes: np.ndarray) -> float:
        a = np.bincount(codes[:m], minlength=len(names)) / m
        b = np.bincount(codes[m:], minlength=len(names)) / (len(codes) - m)
        return float(0.5 * np.abs(a - b).sum())

    rng = np.random.default_rng(seed)
    observed = tv(pooled)
    hits = sum(tv(rng.permutation(pooled)) >= observed for _ in range(permutations))
    return LabelShift(round(observed, 4), (1 + hits) / (1 + permutations), _shares(training_labels), _shares(predicted))


def _shares(labels: list[str]) -> dict[str, float]:
    return {label: round(count / len(labels), 4) for label, count in sorted(Counter(labels).items())}


def is_label_task(answers: list[str]) -> bool:
    """Training answers drawn from a small set of labels: at most 32 distinct, each used 5 times on average."""
    distinct = set(answers)
    return bool(answers) and len(distinct) <= 32 and len(answers) >= 5 * len(distinct)
