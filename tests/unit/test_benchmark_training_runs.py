"""benchmarks/training.py's --run keys: where each goes, and the check before any run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from labelloop.settings import load_settings

_spec = importlib.util.spec_from_file_location(
    "bench_training", Path(__file__).resolve().parents[2] / "benchmarks" / "training.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_run_keys_go_to_training_model_or_dataset():
    name, train, other = bench.parse_run(
        "wb:weight_column=confidence,missing_weight=1.0,min_weight=0.5,validation_fraction=0.1,"
        "decision_bias=macro_f1,label_smoothing=0.1,max_length=128")
    assert name == "wb"
    assert train == {"decision_bias": "macro_f1", "label_smoothing": 0.1}
    assert other == {"weight_column": "confidence", "missing_weight": 1.0, "min_weight": 0.5,
                     "validation_fraction": 0.1, "max_length": 128}


def test_cleaning_keys_go_to_the_run_and_are_checked():
    name, train, other = bench.parse_run("u:urls=token,mentions=token,epochs=2")
    assert train == {"epochs": 2} and other == {"urls": "token", "mentions": "token"}
    settings = load_settings(None, environ={})
    assert bench.check_runs(["u:urls=remove"], settings) == (None, None)
    with pytest.raises(SystemExit, match="dataset.cleaning.urls"):
        bench.check_runs(["u:urls=tok"], settings)


def test_runs_are_checked_before_the_first_one():
    settings = load_settings(None, environ={})
    specs = ["default:", "full/w:weight_column=confidence,missing_weight=1.0",
             "b:validation_fraction=0.1,decision_bias=macro_f1"]
    assert bench.check_runs(specs, settings) == ("confidence", 1.0)
    assert bench.check_runs(["default:"], settings) == (None, None)
    for bad, says in [("b:decision_bias=macro_f1", "decision_bias macro_f1 fits its offsets"),
                      ("t:decision_bais=macro_f1", "unknown key 'training.decision_bais'"),
                      ("m:min_weight=0.5", "min_weight needs dataset.weight_column")]:
        with pytest.raises(SystemExit, match=says):
            bench.check_runs(["default:", bad], settings)
    with pytest.raises(SystemExit, match="one weight_column and missing_weight per call"):
        bench.check_runs(["a:weight_column=confidence,missing_weight=1",
                          "b:weight_column=confidence,missing_weight=0.5"], settings)


def test_seeds_combined_as_ensemble_and_soup(tmp_path):
    """--ensemble: two copies of one model combine into that model (ensemble and soup alike);
    two different heads give the macro-F1 of their mean probabilities, and a soup scored as the
    model with the mean weights."""
    import numpy as np
    import pandas as pd
    import torch

    from labelloop import evaluation, modeling
    from labelloop.tasks import task_from_settings

    settings = load_settings(None, environ={}).model_copy(deep=True)
    settings.training.device = "cpu"
    task = task_from_settings(settings)
    base = modeling.resolve_base_model(settings.model.base)
    dirs = []
    for i, seed in enumerate([0, 0, 1]):
        torch.manual_seed(seed)
        dirs.append(tmp_path / f"m{i}")
        modeling.save_bundle(modeling.load_base_classifier(base, task), modeling.load_tokenizer(base),
                             dirs[-1], {"task": task.to_dict(), "max_length": 32})
    texts = [f"text number {i} is {'great' if i % 3 == 0 else 'awful'}" for i in range(24)]
    labels = [task.labels[i % 3] for i in range(24)]
    case = {"case": "full", "draw": 0, "test": pd.DataFrame({"text": texts, "label": labels}),
            "extra": {}}

    def f1(probs):
        refs = [task.encode_label(x) for x in labels]
        return evaluation.compute_metrics(refs, list(probs.argmax(1)), task)["macro_f1"]

    def probs(clf):
        return torch.softmax(torch.from_numpy(clf.logits(texts)), -1).numpy()

    alone = f1(probs(modeling.Classifier(dirs[0], device="cpu")))
    same = bench.combine("x", dirs[:2], settings, case, task)
    assert [(r["kind"], r["members"]) for r in same] == [("ensemble", 2), ("soup", 2)]
    assert all(r["macro_f1"] == pytest.approx(alone) for r in same)

    other = bench.combine("x", [dirs[0], dirs[2]], settings, case, task)
    p0, p2 = (probs(modeling.Classifier(d, device="cpu")) for d in (dirs[0], dirs[2]))
    assert other[0]["macro_f1"] == pytest.approx(f1((p0 + p2) / 2))
    clf = modeling.Classifier(dirs[0], device="cpu")
    a, b = (modeling.load_bundle_model(d, torch.float32).state_dict() for d in (dirs[0], dirs[2]))
    clf.model.load_state_dict({k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a})
    assert other[1]["macro_f1"] == pytest.approx(f1(probs(clf)))
    assert not np.allclose(p0, p2)  # the two heads differ, so the check above means something


def test_distillation_and_adaptation_keys():
    """teacher / distill_alpha / soft_from_weight and adapt_* are the benchmark's own keys: the
    soft targets mix the teacher's probabilities with the label, or spread the agreement; an
    adapt_* value must be a number above 0."""
    import numpy as np
    import pandas as pd

    from labelloop import data
    from labelloop.tasks import task_from_settings

    name, train, other = bench.parse_run("kd:teacher=full2,distill_alpha=0.5,adapt_epochs=3,"
                                         "learning_rate=1e-4")
    assert (name, train) == ("kd", {"learning_rate": 1e-4})
    assert other == {"teacher": "full2", "distill_alpha": 0.5, "adapt_epochs": 3}
    settings = load_settings(None, environ={})
    with pytest.raises(SystemExit, match="adapt_lr must be a number above 0"):
        bench.check_runs(["t:adapt_lr=0"], settings)

    task = task_from_settings(settings)  # negative, neutral, positive
    rows = pd.DataFrame({"text": ["a", "b"], "label": ["negative", "positive"]})
    case = {"case": "full", "draw": 0, "train": rows}
    teacher = np.array([[0.2, 0.6, 0.2], [0.0, 0.0, 1.0]], dtype=np.float32)
    bench.TEACHERS[("full", 0, "t")] = teacher
    try:
        got = bench.with_soft_targets(rows, {"teacher": "t", "distill_alpha": 0.5}, case, task)
    finally:
        del bench.TEACHERS[("full", 0, "t")]
    assert np.allclose(np.stack(got[data.SOFT_TARGETS]), [[0.6, 0.3, 0.1], [0.0, 0.0, 1.0]])
    with pytest.raises(SystemExit, match="teacher 'gone': no earlier run"):
        bench.with_soft_targets(rows, {"teacher": "gone"}, case, task)

    weighted = rows.assign(**{data.WEIGHT: [0.6, float("nan")]})
    got = bench.with_soft_targets(weighted, {"soft_from_weight": 1}, case, task)
    assert data.WEIGHT not in got
    assert np.allclose(np.stack(got[data.SOFT_TARGETS]), [[0.6, 0.2, 0.2], [0.0, 0.0, 1.0]])


def test_scores_by_agreement_bucket():
    """--by-agreement: each bucket's rows scored alone; 0.0 marks rows without a value."""
    import numpy as np

    from labelloop.tasks import task_from_settings

    task = task_from_settings(load_settings(None, environ={}))
    agreement = np.array([0.0, 0.0, 0.5, 0.7, 0.7, 1.0, 1.0, 0.95])
    refs = [0, 1, 2, 0, 1, 2, 0, 1]
    preds = [0, 0, 2, 1, 1, 2, 0, 1]
    got = bench.by_agreement(refs, preds, agreement, task)
    assert {k: (v["rows"], v["accuracy"]) for k, v in got.items()} == {
        "no value": (2, 0.5), "below 0.6": (1, 1.0), "0.6-0.8": (2, 0.5), "0.9 and up": (3, 1.0)}


def test_blend_with_the_baseline():
    """--blend-baseline: a baseline that is always right lifts the model once its weight is
    half; a uniform one changes nothing; the cross-fitted weight is chosen on the other half."""
    import numpy as np

    from labelloop.tasks import task_from_settings

    task = task_from_settings(load_settings(None, environ={}))
    rng = np.random.default_rng(0)
    refs = [i % 3 for i in range(60)]
    model = rng.dirichlet(np.ones(3), size=60)  # a model that guesses
    alone = bench.blend(model, np.full((60, 3), 1 / 3), refs, task)
    plain = alone["cross_fitted"]["model_alone"]
    assert plain < 0.7
    assert set(alone["by_weight"].values()) == {plain}
    assert alone["cross_fitted"]["macro_f1"] == plain

    right = bench.blend(model, np.eye(3)[refs], refs, task)
    assert right["by_weight"]["0.5"] == 1.0
    assert right["by_weight"]["0.1"] < 1.0
    assert right["cross_fitted"]["macro_f1"] == 1.0
    assert all(w >= 0.5 for w in right["cross_fitted"]["weights"])


def test_crossfit_teacher_predicts_only_rows_it_did_not_train_on(monkeypatch, tmp_path):
    """crossfit=K: K fits per seed, each without one fold of the training rows; the teacher's
    probabilities for a row come from the one fit that never saw it."""
    import numpy as np
    import pandas as pd

    from labelloop.tasks import task_from_settings

    settings = load_settings(None, environ={})
    task = task_from_settings(settings)
    texts = [f"tweet {i}" for i in range(60)]
    rows = pd.DataFrame({"text": texts, "label": [task.labels[i % 3] for i in range(60)]})
    case = {"case": "full", "draw": 0, "train": rows}
    trained_on = {}

    def fake_run_once(name, train_over, model_over, settings, case, task, seed, keep_dir=None):
        assert model_over == {"base": "b"}  # no crossfit, nseeds or augment
        trained_on[keep_dir.name] = set(case["train"]["text"])
        return {"name": name, "seed": seed}

    class FakeClassifier:  # predicts its fold's number as the label index, for every text
        def __init__(self, bundle, device):
            self.fold = int(Path(bundle).name.rpartition("fold")[2])

    monkeypatch.setattr(bench, "run_once", fake_run_once)
    monkeypatch.setattr(bench.modeling, "Classifier", FakeClassifier)
    monkeypatch.setattr(bench, "probabilities", lambda clf, texts, batch_size: np.eye(3)[
        [clf.fold % 3] * len(texts)])
    results = []
    oof, copies, copy_probs = bench.crossfit(bench.parse_run("t:base=b,crossfit=3,nseeds=1"),
                                             settings, case, task, 7, tmp_path, results)
    assert copies == [] and copy_probs is None

    fold = bench.fold_of(texts, 3)
    assert sorted(set(fold)) == [0, 1, 2] and min(np.bincount(fold)) >= 10
    assert [r["name"] for r in results] == ["t/fold0", "t/fold1", "t/fold2"]
    for k in range(3):
        assert trained_on[f"seed7-fold{k}"] == {t for t, f in zip(texts, fold) if f != k}
    assert list(oof.argmax(axis=1)) == list(fold)  # each row from the fit that held it out
    assert list(fold) == list(bench.fold_of(texts, 3))  # the same folds every call

    settings = load_settings(None, environ={})
    for bad, says in [("t:crossfit=1", "crossfit must be a whole number, at least 2"),
                      ("t:nseeds=0", "nseeds must be a whole number, at least 1"),
                      ("t:crossfit=5,teacher=u", "crossfit fits the case's training rows"),
                      ("t:augment=2", "augment labels copies .* it needs crossfit=K"),
                      ("t:crossfit=5,augment=0", "augment must be a whole number, at least 1"),
                      ("t:augmented=1", "augmented=1 .* it needs teacher=NAME")]:
        with pytest.raises(SystemExit, match=says):
            bench.check_runs([bad], settings)

    # augment=N: the same fits also label N copies of each row, by the fit that held the row out
    results.clear()
    oof, copies, copy_probs = bench.crossfit(
        bench.parse_run("t:base=b,crossfit=3,augment=2"), settings, case, task, 7, tmp_path, results)
    sources, again = bench.augment(texts, 2)
    assert copies == again and len(copies) == 2 * len(texts) == len(copy_probs)
    assert list(copy_probs.argmax(axis=1)) == [fold[i] for i in sources]


def test_augment_alters_copies_stably():
    texts = [" ".join(f"w{i}x{j}" for j in range(12)) for i in range(200)]
    sources, copies = bench.augment(texts, 3)
    assert sources == [i for i in range(200) for _ in range(3)]
    assert (sources, copies) == bench.augment(texts, 3)  # the same copies every call
    changed = [c != texts[i] for i, c in zip(sources, copies)]
    assert sum(changed) > 0.9 * len(copies)
    assert len(set(copies)) > 0.95 * len(copies)  # the copies of one text differ
    lengths = [len(c.split()) for c in copies]
    assert min(lengths) >= 1 and max(lengths) <= 12
    assert sum(length < 9 for length in lengths) > 0.1 * len(copies)  # some were cropped
    foreign = sum(w not in texts[i].split() for i, c in zip(sources, copies) for w in c.split())
    assert foreign > 0.05 * sum(lengths)  # words swapped in from other texts


@pytest.mark.parametrize("kept_as", ["t.pkl", "t.pkl.xz"])
def test_augmented_copies_join_the_students_rows_and_teachers_keep(tmp_path, kept_as):
    """augmented=1: the student trains on its rows (teacher and label mixed) plus the teacher's
    copies (the teacher's probabilities alone); --teachers keeps both across calls."""
    import numpy as np
    import pandas as pd

    from labelloop import data
    from labelloop.tasks import task_from_settings

    task = task_from_settings(load_settings(None, environ={}))
    rows = pd.DataFrame({"text": ["a b", "c d"], "label": [task.labels[0], task.labels[1]]})
    case = {"case": "full", "draw": 0, "train": rows}
    key = ("full", 0, "mp")
    bench.TEACHERS[key] = np.array([[0, 1, 0], [0, 0, 1]], dtype=np.float32)
    bench.AUGMENTED[key] = (["a", "d"], np.array([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]], np.float32))
    bench.TEACHER_RECIPES[key] = "--run mp:crossfit=5,augment=1 --config None"
    try:
        got = bench.with_soft_targets(rows, {"teacher": "mp", "distill_alpha": 0.5,
                                             "augmented": 1}, case, task)
        assert list(got["text"]) == ["a b", "c d", "a", "d"]
        assert list(got["label"]) == [task.labels[0], task.labels[1], task.labels[1], task.labels[2]]
        soft = np.stack(got[data.SOFT_TARGETS])
        np.testing.assert_allclose(soft, [[0.5, 0.5, 0], [0, 0.5, 0.5],
                                          [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]], atol=1e-6)
        plain = bench.with_soft_targets(rows, {"teacher": "mp"}, case, task)
        assert len(plain) == 2

        bench.save_teachers(tmp_path / kept_as, [case])
        assert (tmp_path / kept_as).read_bytes().startswith(b"\xfd7zXZ") == kept_as.endswith(".xz")
        bench.TEACHERS.clear(), bench.AUGMENTED.clear(), bench.TEACHER_RECIPES.clear()
        other = {**case, "draw": 0, "train": rows.assign(text=["x", "y"])}
        bench.load_teachers(tmp_path / kept_as, [other])  # other training rows: not taken
        assert key not in bench.TEACHERS
        bench.load_teachers(tmp_path / kept_as, [case])
        np.testing.assert_array_equal(bench.TEACHERS[key][1], [0, 0, 1])
        assert bench.AUGMENTED[key][0] == ["a", "d"]
        assert bench.TEACHER_RECIPES[key] == "--run mp:crossfit=5,augment=1 --config None"
        with pytest.raises(SystemExit, match="made no augmented copies"):
            bench.AUGMENTED.clear()
            bench.with_soft_targets(rows, {"teacher": "mp", "augmented": 1}, case, task)
    finally:
        bench.TEACHERS.clear(), bench.AUGMENTED.clear(), bench.TEACHER_RECIPES.clear()
