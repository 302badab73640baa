"""pipelines/stack.py run_options: what a containerized stack adds to a run (no engine needed)."""

from __future__ import annotations

from labelloop.settings import Settings
from pipelines.stack import local_dataset_files, run_options


def test_containers_stack_mounts_data_and_dataset_and_removes_step_containers(tmp_path):
    corpus = tmp_path / "elsewhere" / "small.csv"
    corpus.parent.mkdir()
    corpus.write_text("text,label\nhi,positive\n")
    settings = Settings(data_dir=str(tmp_path / "data"), dataset={"path": str(corpus)},
                        stack={"name": "labelloop-containers", "step_image": "localhost/x:cpu"},
                        registry={"tracking_uri": "http://127.0.0.1:5000"})
    assert local_dataset_files(settings) == [corpus.resolve()]
    opts = run_options(settings, {"settings": {}})
    docker = opts["settings"]["docker"]
    assert docker.install_stack_requirements is False  # the labelloop image has everything
    assert docker.parent_image_build_config.build_options.build_args == {
        "LABELLOOP_IMAGE": "localhost/x:cpu"}
    run_args = opts["settings"]["orchestrator.local_docker"].run_args
    assert run_args["remove"] is True and run_args["network_mode"] == "host"
    data = str((tmp_path / "data").resolve())
    assert run_args["volumes"][data] == {"bind": data, "mode": "rw"}
    assert run_args["volumes"][str(corpus.resolve())]["mode"] == "ro"
    assert opts["environment"]["LABELLOOP__REGISTRY__TRACKING_URI"] == "http://127.0.0.1:5000"


def test_a_cluster_stack_gets_its_integrations_and_no_local_mounts(tmp_path):
    settings = Settings(data_dir=str(tmp_path / "data"), stack={"name": "labelloop-k8s"},
                        registry={"tracking_uri": "http://mlflow:5000"})
    assert local_dataset_files(settings) == []  # package: path, inside the image
    opts = run_options(settings, {"settings": {}})
    assert opts["settings"]["docker"].install_stack_requirements is True
    assert "orchestrator.local_docker" not in opts["settings"]


def test_the_local_stack_changes_nothing(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    assert run_options(settings, {"settings": {"x": 1}}) == {"settings": {"x": 1}}
