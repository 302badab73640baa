"""labelloop/image.py without a container engine: what goes into the bento, and the errors."""

from __future__ import annotations

import re

import pytest
import yaml

from labelloop import image
from labelloop.settings import ImageSettings
from tests.helpers import REPO_ROOT


def test_cpu_bentofile_ships_the_cpu_wheel_and_no_pypi_torch(tmp_path):
    cfg = ImageSettings()
    wheel = "build/image-wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    spec = yaml.safe_load(image.render_bentofile(cfg, wheel, image.LOCAL_BASE_IMAGE,
                                                 tmp_path / "b.yaml").read_text())
    assert spec["python"]["wheels"] == [wheel]
    assert not any(p.startswith("torch") for p in spec["python"]["packages"])
    assert spec["docker"]["base_image"] == image.LOCAL_BASE_IMAGE
    assert spec["docker"]["dockerfile_template"] == "configs/image/Dockerfile.j2"
    assert spec["service"] == "services.service:Labelloop"


def test_gpu_bentofile_pins_the_cuda_build(tmp_path):
    cfg = ImageSettings(variant="gpu", base_image="python:3.11-slim")
    line = image.torch_requirement(cfg, tmp_path)
    spec = yaml.safe_load(image.render_bentofile(cfg, line, "python:3.11-slim",
                                                 tmp_path / "b.yaml").read_text())
    assert spec["python"]["packages"] == ["torch==2.13.0"]
    assert "wheels" not in spec["python"]


def test_one_torch_version_everywhere():
    makefile = (REPO_ROOT / "Makefile").read_text()
    bentofile = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())
    version = ImageSettings().torch_version
    assert re.findall(r'"torch==([\d.]+)"', makefile) == [version]
    assert bentofile["python"]["packages"] == [f"torch=={version}"]


def test_template_installs_the_pinned_project_deps():
    text = (REPO_ROOT / "configs" / "image" / "Dockerfile.j2").read_text()
    assert "-c $BENTO_PATH/deps/pip-constraints.txt" in text
    assert "-r $BENTO_PATH/deps/pyproject.toml" in text and "wheels/*.whl" in text
    include = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())["include"]
    assert "configs/pip-constraints.txt" in include and "pyproject.toml" in include


def test_no_engine_names_the_fix(monkeypatch):
    monkeypatch.setattr(image.shutil, "which", lambda name, **kw: None)
    with pytest.raises(image.ImageError, match="no working container engine.*make containers"):
        image.find_engine(ImageSettings())


def test_no_debootstrap_and_no_base_image_names_the_fix(monkeypatch):
    monkeypatch.setattr(image.shutil, "which", lambda name, **kw: None)
    engine = image.Engine("podman", "/bin/false", {})
    with pytest.raises(image.ImageError, match="set image.base_image .* install debootstrap"):
        image.build_local_base(engine, ImageSettings())


def test_a_set_base_image_is_used_as_is():
    engine = image.Engine("podman", "/bin/false", {})
    assert image.base_image(engine, ImageSettings(base_image="python:3.11-slim")) == \
        "python:3.11-slim"


def _fake_project(root):
    (root / "configs" / "image").mkdir(parents=True)
    (root / "configs" / "image" / "Dockerfile.j2").write_text("FROM x\n")
    (root / "bentofile.yaml").write_text((REPO_ROOT / "bentofile.yaml").read_text())
    (root / "labelloop" / "__pycache__").mkdir(parents=True)
    (root / "labelloop" / "a.py").write_text("A = 1\n")
    (root / "labelloop" / "__pycache__" / "a.py").write_text("junk\n")
    (root / "tests").mkdir()
    (root / "tests" / "t.py").write_text("T = 1\n")
    (root / "pyproject.toml").write_text("[project]\n")


def test_inputs_digest_follows_what_goes_into_the_image(tmp_path):
    _fake_project(tmp_path)
    files = [p.relative_to(tmp_path).as_posix() for p in image.bento_files(tmp_path)]
    assert files == ["labelloop/a.py", "pyproject.toml"]
    first = image.inputs_digest("bentofile", "sha256:base", tmp_path)
    assert image.inputs_digest("bentofile", "sha256:base", tmp_path) == first
    (tmp_path / "tests" / "t.py").write_text("T = 2\n")  # not in the bento: same image
    (tmp_path / "labelloop" / "__pycache__" / "a.py").write_text("other\n")
    assert image.inputs_digest("bentofile", "sha256:base", tmp_path) == first
    assert image.inputs_digest("bentofile", "sha256:other-base", tmp_path) != first
    assert image.inputs_digest("bentofile, gpu torch", "sha256:base", tmp_path) != first
    (tmp_path / "configs" / "image" / "Dockerfile.j2").write_text("FROM y\n")
    second = image.inputs_digest("bentofile", "sha256:base", tmp_path)
    assert second != first
    (tmp_path / "labelloop" / "a.py").write_text("A = 2\n")
    assert image.inputs_digest("bentofile", "sha256:base", tmp_path) != second


def test_the_repository_bento_files_hold_the_service_and_the_pipelines():
    files = {p.relative_to(REPO_ROOT).as_posix() for p in image.bento_files()}
    assert {"services/service.py", "pipelines/feedback.py", "labelloop/image.py",
            "configs/pip-constraints.txt", "pyproject.toml"} <= files
    assert not any(f.startswith(("tests/", ".venv/", "build/")) or "__pycache__" in f
                   for f in files)


class _RecordingEngine(image.Engine):
    """An engine that records its calls and knows only the images it is told about."""

    def __init__(self, images):
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "images", dict(images))
        super().__init__("podman", "/bin/false", {})

    def run(self, *args, check=True, capture=True, timeout=None, input_=None):
        import subprocess

        self.calls.append(args)
        ok, out = 0, b""
        if args[:2] == ("image", "inspect"):
            ref = args[-1]
            ok, out = (0, self.images[ref].encode()) if ref in self.images else (1, b"")
        return subprocess.CompletedProcess(args, ok, out, b"no such image")


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_a_failed_containerize_tags_nothing(monkeypatch, tmp_path, variant):
    from labelloop.settings import Settings

    engine = _RecordingEngine({image.LOCAL_BASE_IMAGE: "sha256:base"})
    monkeypatch.setattr(image, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(image, "find_engine", lambda cfg: engine)
    monkeypatch.setattr(image, "build_bento", lambda bentofile, home: "labelloop:abc")
    monkeypatch.setattr(image, "cpu_torch_wheel", lambda cfg, d: tmp_path / "torch.whl")
    monkeypatch.setattr(image, "torch_requirement",
                        lambda cfg, d: "torch==2.13.0" if cfg.variant == "gpu"
                        else "build/image-wheels/torch.whl")
    failed = image.subprocess.CompletedProcess([], 1, "step 7/9 uv pip install", "no space left")
    monkeypatch.setattr(image.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(image.ImageError, match=r"the image build failed \(nothing was tagged\)"
                                               r".*no space left"):
        image.build(Settings(image={"variant": variant}), log=lambda msg: None)
    assert not any(call[0] == "tag" for call in engine.calls)
    removed = [call for call in engine.calls if call[:2] == ("rmi", "-f")]
    assert len(removed) == 1 and ":building-" in removed[0][2]  # only the temporary name
    assert not (tmp_path / "images").exists()  # no state: the next build builds
