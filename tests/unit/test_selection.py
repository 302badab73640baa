"""labelloop.selection: each strategy on constructed probabilities and embeddings, the mix
share, determinism under a seed, the error cases, and the settings/strategy names in step."""

import typing

import numpy as np
import pytest

from labelloop import selection
from labelloop.settings import ConfigError, StudioSettings, load_settings

PROBS = np.array([
    [0.90, 0.05, 0.05],  # 0 confident
    [0.40, 0.35, 0.25],  # 1 low top, small margin
    [0.50, 0.49, 0.01],  # 2 higher top, tiny margin, low entropy
    [0.34, 0.34, 0.32],  # 3 least certain by every measure
    [0.60, 0.20, 0.20],  # 4 middling
])


def test_uncertainty_measures_rank_as_defined():
    assert selection.select("least_confidence", PROBS, 5).tolist() == [3, 1, 2, 4, 0]
    assert selection.select("margin", PROBS, 5).tolist() == [3, 2, 1, 4, 0]
    assert selection.select("entropy", PROBS, 5).tolist() == [3, 1, 4, 2, 0]
    assert selection.select("margin", PROBS, 2).tolist() == [3, 2]


def test_uncertainty_is_an_alias_of_least_confidence():
    assert selection.canonical("uncertainty") == "least_confidence"
    assert selection.select("uncertainty", PROBS, 3).tolist() == \
        selection.select("least_confidence", PROBS, 3).tolist()


def test_ties_keep_pool_order():
    probs = np.tile([0.5, 0.3, 0.2], (4, 1))
    assert selection.select("margin", probs, 4).tolist() == [0, 1, 2, 3]


def test_random_is_seeded_and_distinct():
    a = selection.select("random", PROBS, 3, seed=7)
    assert a.tolist() == selection.select("random", PROBS, 3, seed=7).tolist()
    assert len(set(a.tolist())) == 3
    draws = {tuple(selection.select("random", PROBS, 3, seed=s)) for s in range(20)}
    assert len(draws) > 1


def _blobs(n_per=40, centres=4, dim=8, seed=0):
    """Well separated embedding clusters; in every cluster the same uncertainty spread."""
    rng = np.random.default_rng(seed)
    emb, cluster = [], []
    for c in range(centres):
        centre = np.zeros(dim)
        centre[c] = 10.0
        emb.append(centre + rng.normal(0, 0.1, (n_per, dim)))
        cluster += [c] * n_per
    return np.vstack(emb), np.array(cluster)


def test_diverse_takes_one_per_cluster_where_margin_takes_one_cluster():
    emb, cluster = _blobs()
    n = len(cluster)
    # Cluster 0 holds all of the most uncertain texts; the other clusters are less uncertain.
    top = np.where(cluster == 0, 0.40, 0.70) + np.linspace(0, 0.05, n)
    second = 1 - top - 0.05
    probs = np.stack([top, second, np.full(n, 0.05)], axis=1)
    by_margin = selection.select("margin", probs, 4)
    assert set(cluster[by_margin]) == {0}
    picks = selection.select("diverse", probs, 4, embeddings=emb, seed=0, diverse_candidates=40)
    assert sorted(cluster[picks]) == [0, 1, 2, 3]
    # within each cluster the most uncertain member, listed most uncertain first
    margins = selection.margin(probs)
    for i in picks:
        same = np.flatnonzero(cluster == cluster[i])
        assert margins[i] == margins[same].max()
    assert list(margins[picks]) == sorted(margins[picks], reverse=True)


def test_diverse_candidates_limit_the_search_to_the_least_certain():
    emb, cluster = _blobs()
    n = len(cluster)
    top = np.where(cluster == 0, 0.40, 0.70) + np.linspace(0, 0.05, n)
    probs = np.stack([top, 1 - top - 0.05, np.full(n, 0.05)], axis=1)
    # 4 x 10 = 40 candidates = exactly cluster 0's members: one cluster to pick from
    picks = selection.select("diverse", probs, 4, embeddings=emb, seed=0, diverse_candidates=10)
    assert set(cluster[picks]) == {0} and len(set(picks.tolist())) == 4


def test_balanced_gives_each_predicted_class_its_share():
    emb, cluster = _blobs(n_per=30, centres=3)
    # 80 texts predicted class 0, 5 class 1, 5 class 2 (a skewed pool), uncertainty irrelevant
    predicted = np.zeros(90, dtype=int)
    predicted[[3, 33, 63, 10, 40]] = 1
    predicted[[5, 35, 65, 15, 45]] = 2
    probs = np.full((90, 3), 0.1)
    probs[np.arange(90), predicted] = 0.8
    picks = selection.select("balanced", probs, 9, embeddings=emb, seed=0)
    assert len(set(picks.tolist())) == 9
    assert np.bincount(predicted[picks], minlength=3).tolist() == [3, 3, 3]
    # class 0's three picks are representatives of its three embedding clusters
    zero = [i for i in picks if predicted[i] == 0]
    assert sorted(cluster[zero]) == [0, 1, 2]
    # shown interleaved: the first three already cover all classes
    assert sorted(predicted[picks[:3]]) == [0, 1, 2]


def test_balanced_hands_a_small_class_leftover_to_the_others():
    emb, _ = _blobs(n_per=10, centres=2)
    probs = np.full((20, 3), 0.1)
    probs[:, 0] = 0.8
    probs[0] = [0.1, 0.8, 0.1]  # one text predicted class 1, none class 2
    picks = selection.select("balanced", probs, 6, embeddings=emb, seed=0)
    assert 0 in picks and len(set(picks.tolist())) == 6


@pytest.mark.parametrize("share,n_random", [(0.0, 0), (0.3, 3), (0.5, 5), (1.0, 10)])
def test_mix_share_of_random_picks(share, n_random):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=200)
    picks = selection.select("mix", probs, 10, seed=3, random_share=share, mix_with="margin")
    assert len(set(picks.tolist())) == 10
    best = selection.select("margin", probs, 10 - n_random) if n_random < 10 else np.array([])
    assert set(best.tolist()) <= set(picks.tolist())
    others = set(picks.tolist()) - set(best.tolist())
    assert len(others) == n_random
    assert picks.tolist() == selection.select("mix", probs, 10, seed=3, random_share=share).tolist()


def test_mix_interleaves_random_picks():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1, 1], size=500)
    picks = selection.select("mix", probs, 10, seed=0, random_share=0.5)
    best = set(selection.select("margin", probs, 5).tolist())
    is_best = [int(i) in best for i in picks]
    assert is_best[:2] != [False, False] and is_best[-2:] != [False, False]
    assert selection.interleave(np.array([1, 2, 3, 4]), np.array([9, 8])).tolist() == \
        [1, 9, 2, 3, 8, 4]
    assert selection.interleave(np.array([], dtype=int), np.array([5, 6])).tolist() == [5, 6]


def test_mix_with_diverse_needs_embeddings():
    with pytest.raises(ValueError, match="embeddings"):
        selection.select("mix", PROBS, 2, mix_with="diverse")


@pytest.mark.parametrize("strategy", ["random", "margin", "diverse", "balanced", "mix"])
def test_every_strategy_is_deterministic_under_a_seed(strategy):
    emb, _ = _blobs(n_per=25, centres=4)
    probs = np.random.default_rng(5).dirichlet([1, 1, 1], size=len(emb))
    runs = [selection.select(strategy, probs, 8, embeddings=emb, seed=11).tolist() for _ in range(2)]
    assert runs[0] == runs[1] and len(set(runs[0])) == 8


def test_error_cases():
    with pytest.raises(ValueError, match="unknown ordering 'nope'"):
        selection.select("nope", PROBS, 2)
    with pytest.raises(ValueError, match="fewer than the 6"):
        selection.select("margin", PROBS, 6)
    with pytest.raises(ValueError, match="at least one"):
        selection.select("random", PROBS, 0)
    with pytest.raises(ValueError, match="needs the model's embeddings"):
        selection.select("diverse", PROBS, 2)
    with pytest.raises(ValueError, match="embeddings for"):
        selection.select("balanced", PROBS, 2, embeddings=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="mix_with"):
        selection.select("mix", PROBS, 2, mix_with="random")
    with pytest.raises(ValueError, match="shape"):
        selection.select("margin", np.ones(5), 2)


def test_settings_offer_exactly_the_selection_strategies():
    offered = set(typing.get_args(StudioSettings.model_fields["ordering"].annotation))
    assert offered == set(selection.STRATEGIES) | set(selection.ALIASES)
    partners = set(typing.get_args(StudioSettings.model_fields["mix_with"].annotation))
    assert partners == set(selection.MIX_PARTNERS) | set(selection.ALIASES)


def test_unknown_ordering_in_settings_is_one_clear_error():
    with pytest.raises(ConfigError, match="ordering"):
        load_settings(None, overrides={"studio": {"ordering": "smartest"}}, environ={})


def test_forward_scores_gives_probabilities_and_pooled_embeddings():
    """A tiny stand-in model: logits and hidden states from one call, padding ignored."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 3)
            self.calls = 0

        def forward(self, input_ids, attention_mask, output_hidden_states=False):
            self.calls += 1
            h = self.emb(input_ids)
            pooled = (h * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)
            return type("Out", (), {"logits": self.head(pooled), "hidden_states": (h, h)})()

    torch.manual_seed(0)
    model = Tiny()
    ids = [[1, 2, 3], [4], [5, 6]]
    out = selection.forward_scores(model, ids, pad_token_id=0, device="cpu", batch_size=8)
    assert model.calls == 1
    assert out.probabilities.shape == (3, 3) and out.embeddings.shape == (3, 4)
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, rtol=1e-6)
    with torch.no_grad():
        expected = model.emb(torch.tensor([4])).mean(0).numpy()
    np.testing.assert_allclose(out.embeddings[1], expected, rtol=1e-5)  # pad rows not averaged
    small = selection.forward_scores(model, ids, pad_token_id=0, device="cpu", batch_size=1)
    np.testing.assert_allclose(small.embeddings, out.embeddings, rtol=1e-5)


def test_score_texts_on_a_real_bundle_matches_the_classifier(tmp_path):
    """MiniLM bundle (untrained head): the one-pass probabilities equal Classifier.predict's,
    the embeddings are the mean of the last hidden state, and select runs on them."""
    import torch

    from labelloop import modeling
    from labelloop.tasks import task_from_settings

    settings = load_settings(None, environ={})
    task = task_from_settings(settings)
    base = modeling.resolve_base_model(settings.model.base)
    torch.manual_seed(0)
    modeling.save_bundle(modeling.load_base_classifier(base, task), modeling.load_tokenizer(base),
                         tmp_path / "b", {"task": task.to_dict(), "max_length": 32, "version": "1"})
    clf = modeling.Classifier(tmp_path / "b", device="cpu")
    texts = ["great day", "the train was late again and nobody told us", "ok", "meh"] * 5
    scores = selection.score_texts(clf, texts)
    want = np.array([[p.probabilities[lab] for lab in clf.labels] for p in clf.predict(texts)])
    np.testing.assert_allclose(scores.probabilities, want, atol=1e-5)
    assert scores.embeddings.shape == (len(texts), clf.model.config.hidden_size)
    ids = clf.encode(texts[1:2])
    with torch.no_grad():
        hidden = clf.model(input_ids=torch.tensor(ids), output_hidden_states=True).hidden_states[-1]
    np.testing.assert_allclose(scores.embeddings[1], hidden[0].mean(0).numpy(), atol=1e-5)
    picks = selection.select("diverse", scores.probabilities, 3, embeddings=scores.embeddings)
    assert len(set(picks.tolist())) == 3
