"""Pack the inputs of the air-gapped GPU run (benchmarks/gpu_compare.py --node) into one folder.

    python benchmarks/gpu_kit/pack.py                                # from ../shared/data into kit/
    python benchmarks/gpu_kit/pack.py --data-root /data --dest kit   # any torchvision-layout root

Writes ``<dest>/fashion_mnist.npz`` (Fashion-MNIST as one compressed file) and
``<dest>/manifest.json``, checks that the folder fits the node's 64 MiB budget for carried files,
and prints the command to run on the node and the folders to bring. No wheel is carried (see
``kit.WHEELS_NOTE``). ``kit/`` is git-ignored: the repository commits no data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.gpu_kit.kit import BUDGET_MIB, read_raw, write_kit
from ssl_diffusion.errors import UserError


def node_command(kit: str) -> str:
    return f"OUT=<empty folder> python benchmarks/gpu_compare.py --node --kit {kit}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                   help="folder holding FashionMNIST/raw (torchvision layout)")
    p.add_argument("--dest", default="kit", help="kit folder, relative to the repository root")
    p.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    args = p.parse_args(argv)
    try:
        dest = Path(args.dest) if Path(args.dest).is_absolute() else REPO / args.dest
        kit = write_kit(dest, read_raw(Path(args.data_root)), f"torchvision raw files under "
                        f"{Path(args.data_root).resolve()}", args.budget_mib)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rel = dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest
    m = kit.manifest
    print(f"kit: {dest} ({kit.size_bytes / 2**20:.1f} MiB of the {args.budget_mib:g} MiB budget); "
          f"{m['counts']['train']} train + {m['counts']['test']} test images; {m['wheels_note']}")
    print(f"bring: the repository's tracked files and the ignored folder {rel}/")
    print("run on the node (from the repository root; ends within 10 minutes):\n  "
          + node_command(str(rel)))
    print("then, back on a CPU machine with the project installed:\n"
          f"  python benchmarks/gpu_compare.py --collect <the node's OUT folder> --kit {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
