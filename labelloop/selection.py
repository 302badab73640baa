"""Which unlabelled texts annotators see first: plain functions over the champion's outputs.

Every strategy takes the class probabilities of the pool (rows = texts) and, where it needs
them, the champion's embeddings of the same texts, both from ONE batched forward pass
(`score_texts` / `forward_scores`), and returns the indices of the `k` texts to label, in the
order to show them.

Strategies (`STRATEGIES`; `uncertainty` is the old name of `least_confidence`):

- `random`: a seeded uniform draw, the baseline every other one must beat.
- `least_confidence`: lowest top-class probability first.
- `margin`: smallest gap between the two most probable classes first ("breaking ties"; the
  strongest plain uncertainty measure for transformers in Schröder et al. 2022).
- `entropy`: highest entropy of the class distribution first.
- `diverse`: the `diverse_candidates * k` least margin-certain texts are clustered into k groups
  (k-means on the L2-normalised embeddings) and the most uncertain text of each group is taken,
  so one round is not k near-duplicates of the same confusing tweet.
- `balanced`: equal shares per predicted class, each share the texts nearest to k-means centres
  of that class's embeddings: a representative, class-balanced set that needs no calibrated
  uncertainty (the cure for the cold start, when a model trained on a few labels is unsure about
  outliers and its least certain texts teach little).
- `mix`: `random_share` of the round drawn at random, the rest by `mix_with`, interleaved so an
  annotator who stops early has seen both; the random share keeps the labelled set close to the
  data's distribution (uncertainty sampling alone drifts to the noisy class boundaries).

Everything is deterministic for a given seed. Picking among 30k texts takes well under a second
for the probability-only strategies and a few seconds for the k-means ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

STRATEGIES = ("random", "least_confidence", "margin", "entropy", "diverse", "balanced", "mix")
ALIASES = {"uncertainty": "least_confidence"}
NEEDS_EMBEDDINGS = frozenset({"diverse", "balanced"})
# What `mix` may combine with random picks (itself excluded; random + random is random).
MIX_PARTNERS = tuple(s for s in STRATEGIES if s not in ("random", "mix"))


def canonical(strategy: str) -> str:
    """The strategy's own name (aliases resolved); ValueError for an unknown one."""
    name = ALIASES.get(strategy, strategy)
    if name not in STRATEGIES:
        known = ", ".join(STRATEGIES + tuple(ALIASES))
        raise ValueError(f"unknown ordering {strategy!r} (one of: {known})")
    return name


def needs_embeddings(strategy: str, mix_with: str = "margin") -> bool:
    name = canonical(strategy)
    if name == "mix":
        return canonical(mix_with) in NEEDS_EMBEDDINGS
    return name in NEEDS_EMBEDDINGS


# -- uncertainty measures: higher = less certain ---------------------------------------------
def least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs.max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """Minus the gap between the two most probable classes (so higher = closer tie)."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 0] - top2[:, 1]


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


MEASURES = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}


def most_uncertain(probs: np.ndarray, k: int, measure: str) -> np.ndarray:
    """The k most uncertain rows, most uncertain first (ties: lower index first)."""
    score = MEASURES[measure](probs)
    return np.argsort(-score, kind="stable")[:k]


# -- batch strategies ------------------------------------------------------------------------
def _normalise(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _kmeans_labels(points: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each point, centres): one k-means run, seeded (k-means++ start)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_clusters, n_init=1, max_iter=50, random_state=seed)
    labels = km.fit_predict(points)
    return labels, km.cluster_centers_


def diverse(probs: np.ndarray, embeddings: np.ndarray, k: int, seed: int,
            candidates: int = 10) -> np.ndarray:
    """Most uncertain (margin) text of each of k clusters of the `candidates * k` least certain."""
    n_cand = min(len(probs), max(k, candidates * k))
    cand = most_uncertain(probs, n_cand, "margin")  # most uncertain first
    if n_cand == k:
        return cand
    labels, _ = _kmeans_labels(_normalise(embeddings[cand]), k, seed)
    # `cand` is sorted most uncertain first, so the first member met per cluster is its most
    # uncertain one; the picks come out in uncertainty order too.
    _, first = np.unique(labels, return_index=True)
    picks = cand[np.sort(first)]
    if len(picks) < k:  # k-means left clusters empty (duplicates): fill by uncertainty
        rest = cand[~np.isin(cand, picks)]
        picks = np.concatenate([picks, rest[:k - len(picks)]])
    return picks


def _quotas(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split k as evenly as the group sizes allow (a small group gives its leftover to others)."""
    quota = np.zeros(len(sizes), dtype=int)
    left = k
    while left > 0:
        open_ = np.flatnonzero(quota < sizes)
        share = max(1, left // len(open_))
        for g in open_:
            add = min(share, sizes[g] - quota[g], left)
            quota[g] += add
            left -= add
            if left == 0:
                break
    return quota


def balanced(probs: np.ndarray, embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Equal shares per predicted class; in each, the texts nearest to its k-means centres."""
    predicted = probs.argmax(axis=1)
    classes = np.unique(predicted)
    sizes = np.array([(predicted == c).sum() for c in classes])
    quota = _quotas(sizes, k)
    emb = _normalise(embeddings)
    per_class = []
    for c, q in zip(classes, quota):
        members = np.flatnonzero(predicted == c)
        if q == 0:
            continue
        if q >= len(members):
            per_class.append(members)
            continue
        labels, centres = _kmeans_labels(emb[members], int(q), seed)
        dist = ((emb[members] - centres[labels]) ** 2).sum(axis=1)
        picks = []
        for j in range(int(q)):
            in_j = np.flatnonzero(labels == j)
            if len(in_j):
                picks.append(members[in_j[np.argmin(dist[in_j])]])
        if len(picks) < q:  # empty clusters: the members nearest any centre, not yet taken
            taken = set(picks)
            for i in np.argsort(dist, kind="stable"):
                if len(picks) == q:
                    break
                if members[i] not in taken:
                    picks.append(members[i])
        per_class.append(np.array(picks))
    # Interleave the classes so every stretch of the round is balanced, not class after class.
    out = []
    for r in range(max(len(p) for p in per_class)):
        out.extend(int(p[r]) for p in per_class if r < len(p))
    return np.array(out[:k], dtype=np.int64)


def interleave(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spread `second` evenly through `first` (both keep their own order)."""
    n = len(first) + len(second)
    if not len(second):
        return first
    # the j-th of m picks sits in the middle of the j-th of m equal stretches of the round
    slots = ((np.arange(len(second)) + 0.5) * n / len(second)).astype(int)
    is_second = np.zeros(n, dtype=bool)
    is_second[slots] = True
    out = np.empty(n, dtype=np.int64)
    out[is_second] = second
    out[~is_second] = first
    return out


def select(strategy: str, probabilities: np.ndarray, k: int, *,
           embeddings: Optional[np.ndarray] = None, seed: int = 0, random_share: float = 0.3,
           mix_with: str = "margin", diverse_candidates: int = 10) -> np.ndarray:
    """Indices of the k rows to label next, in the order to show them."""
    name = canonical(strategy)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be (texts, classes >= 2), got shape {probs.shape}")
    n = probs.shape[0]
    if k <= 0:
        raise ValueError(f"a round must ask for at least one text, got k={k}")
    if n < k:
        raise ValueError(f"the pool holds {n} unlabelled texts, fewer than the {k} a round asks "
                         "for: add texts to the pool or ask for fewer")
    if needs_embeddings(name, mix_with):
        if embeddings is None:
            raise ValueError(f"ordering {strategy!r} needs the model's embeddings of the pool "
                             "(labelloop.selection.score_texts gives both in one pass)")
        if len(embeddings) != n:
            raise ValueError(f"{len(embeddings)} embeddings for {n} probability rows")
    if name == "random":
        return np.random.default_rng(seed).choice(n, size=k, replace=False)
    if name in MEASURES:
        return most_uncertain(probs, k, name)
    if name == "diverse":
        return diverse(probs, embeddings, k, seed, diverse_candidates)
    if name == "balanced":
        return balanced(probs, embeddings, k, seed)
    # mix
    partner = canonical(mix_with)
    if partner not in MIX_PARTNERS:
        raise ValueError(f"mix_with must be one of {', '.join(MIX_PARTNERS)}, got {mix_with!r}")
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"random_share must be in [0, 1], got {random_share}")
    n_random = int(round(random_share * k))
    chosen = select(partner, probs, k - n_random, embeddings=embeddings, seed=seed,
                    diverse_candidates=diverse_candidates) if k > n_random else \
        np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), chosen)
    randoms = np.random.default_rng(seed).choice(rest, size=n_random, replace=False)
    return interleave(chosen, randoms)


# -- one batched pass of the model ---------------------------------------------------------------
@dataclass
class PoolScores:
    probabilities: np.ndarray  # (texts, classes), softmax of the logits
    embeddings: np.ndarray     # (texts, hidden): mean of the last hidden state over real tokens


def forward_scores(model, token_ids: Sequence[Sequence[int]], pad_token_id: int, device,
                   batch_size: int = 512, offsets: Optional[np.ndarray] = None) -> PoolScores:
    """Probabilities and mean-pooled last hidden states of a sequence classifier, one pass.

    Works for any Hugging Face `...ForSequenceClassification` (PEFT-wrapped too): the logits and
    `hidden_states[-1]` come out of the same forward call. Texts are sorted by length so
    batches pad little; the bf16 matrix products on a GPU are what serving uses too.
    `offsets`: per-class offsets added to the logits before the softmax (a bundle's decision
    bias, labelloop/decision.py), as `Classifier.logits` adds them.
    """
    import torch

    device = torch.device(device)
    n = len(token_ids)
    lengths = np.fromiter((len(x) for x in token_ids), dtype=np.int64, count=n)
    order = np.argsort(lengths, kind="stable")
    probs = embs = None
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            lens = lengths[idx]
            padded = np.full((len(idx), int(lens.max())), pad_token_id, dtype=np.int64)
            for row, i in enumerate(idx):
                padded[row, :lens[row]] = token_ids[i]
            ids = torch.from_numpy(padded).to(device)
            mask = (torch.arange(padded.shape[1])[None, :] < torch.from_numpy(lens)[:, None])
            mask = mask.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
            last = out.hidden_states[-1].float()
            m = mask.unsqueeze(-1).float()
            pooled = (last * m).sum(1) / m.sum(1).clamp(min=1.0)
            logits = out.logits.float()
            if offsets is not None:
                logits = logits + torch.as_tensor(offsets, dtype=torch.float32,
                                                  device=logits.device)
            p = torch.softmax(logits, dim=-1)
            if probs is None:
                probs = np.empty((n, p.shape[1]), dtype=np.float32)
                embs = np.empty((n, pooled.shape[1]), dtype=np.float32)
            probs[idx] = p.cpu().numpy()
            embs[idx] = pooled.cpu().numpy()
    if was_training:
        model.train()
    if probs is None:
        probs, embs = np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return PoolScores(probabilities=probs, embeddings=embs)


def score_texts(classifier, texts: Sequence[str], batch_size: Optional[int] = None) -> PoolScores:
    """Both inputs of `select` for a `labelloop.modeling.Classifier` (the champion), one pass."""
    if batch_size is None:  # GPUs want big batches; on a CPU padding is real work
        batch_size = 512 if classifier.device.type == "cuda" else 32
    return forward_scores(classifier.model, classifier.encode(list(texts)),
                          classifier.pad_token_id, classifier.device, batch_size,
                          offsets=getattr(classifier, "decision_bias", None))
