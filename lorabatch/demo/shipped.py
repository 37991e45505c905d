"""The default demo bank, shipped with the package: the demo runs on it as it is, without building.

Layout (package data)::

    lorabatch/demo/shipped/bank/          the bank exactly as `build_demo_bank` wrote it
    lorabatch/demo/shipped/record.json    {"recipe", "recipe_sha256", "files": {path: sha256}, "bytes"}

`provide_demo_bank` is what a run config's `bank.demo` section calls: when the recipe asked for
(`lorabatch.demo.recipe.recipe`) is the shipped one, the shipped files are checked against their
recorded sha256 and copied into `bank.root`; any other recipe is built. Every figure the README and
BENCHMARKS.md give for the demo comes from this one bank, so it does not depend on the CPU a build
would run on. `lorabatch bank build-demo OUT --compare-shipped` rebuilds it and says whether the
rebuild matches bit for bit, and where it differs.

Maintainers refresh it after a recipe change with `python -m lorabatch.demo.shipped BANK_DIR` (a
default bank just built); a test fails while the recorded recipe differs from the code's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

from lorabatch.atomic import atomic_dir, write_json
from lorabatch.demo.build import MANIFEST, build_demo_bank, log_to_stderr, read_manifest
from lorabatch.demo.families import Family
from lorabatch.demo.lora_init import DEFAULT_SHARED_FRACTION
from lorabatch.demo.recipe import recipe, recipe_sha256
from lorabatch.errors import LorabatchError

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).with_name("shipped")
SHIPPED_BANK = SHIPPED / "bank"
RECORD = SHIPPED / "record.json"
# What a rebuild may change in demo_bank.json without the bank being another bank: wall times and
# the library versions it ran under.
VOLATILE_FIELDS = ("timings_s", "train_seconds", "versions")


def shipped_record() -> dict | None:
    """The shipped bank's record, or None when the package ships no bank."""
    try:
        return json.loads(RECORD.read_text())
    except FileNotFoundError:
        return None


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, keyed by its POSIX path relative to `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def differing_files(root: Path, files: dict[str, str]) -> dict[str, str]:
    """Files under `root` that differ from `files` (path → sha256), each with how: missing,
    another sha256, or not in the record."""
    have = file_hashes(root) if root.is_dir() else {}
    how = {path: "missing" for path in files if path not in have}
    how |= {
        path: f"sha256 {have[path][:12]}…, recorded {sha[:12]}…"
        for path, sha in files.items()
        if path in have and have[path] != sha
    }
    how |= {path: "not in the record" for path in have if path not in files}
    return how


def bank_differences(root: Path, files: dict[str, str]) -> list[str]:
    """`differing_files` as lines `path: how`."""
    return [f"{path}: {how}" for path, how in differing_files(root, files).items()]


def provide_demo_bank(
    out: str | Path,
    size: str = "default",
    seed: int = 0,
    threads: int | None = None,
    lora_init: str = "mixed",
    shared_fraction: float = DEFAULT_SHARED_FRACTION,
    parallel: int | None = None,
    base: str = "instruct",
    families: tuple[Family, ...] | None = None,
    progress: bool = True,
) -> Path:
    """A demo bank of these arguments in `out`: the shipped one when its recipe is the one asked
    for (copied after its files are checked), else `build_demo_bank`'s (kept or built)."""
    record = shipped_record()
    want = recipe(size, seed, threads, lora_init, shared_fraction, base, families)
    if record is None or record["recipe"] != want:
        return build_demo_bank(
            out,
            size=size,
            seed=seed,
            progress=progress,
            threads=threads,
            lora_init=lora_init,
            shared_fraction=shared_fraction,
            parallel=parallel,
            base=base,
            families=families,
        )
    out = Path(out)
    if not bank_differences(out, record["files"]):
        return out
    with log_to_stderr(progress, log):
        install_shipped(out, record)
    return out


def install_shipped(out: Path, record: dict) -> None:
    """Copy the shipped bank into `out` (atomically), checked against its record on the copy; a
    non-empty `out` that is not a demo bank is refused, another demo bank there is replaced."""
    holds_demo_bank = read_manifest(out) is not None
    if out.exists() and not holds_demo_bank and (not out.is_dir() or any(out.iterdir())):
        raise LorabatchError(
            f"{out} exists and is not a demo bank: refusing to replace it with the shipped one "
            "(choose an empty or new directory for bank.root)"
        )
    with atomic_dir(out) as tmp:
        shutil.copytree(SHIPPED_BANK, tmp, dirs_exist_ok=True)
        damaged = bank_differences(tmp, record["files"])
        if damaged:  # `out` is left as it was
            raise LorabatchError(
                f"the shipped demo bank in {SHIPPED_BANK} does not match its record ({'; '.join(damaged[:3])}): "
                f"restore it from the repository, or build the bank with `lorabatch bank build-demo {out} --force`"
            )
    if holds_demo_bank:
        log.warning("%s held another demo bank than the shipped one: replaced by the shipped bank", out)
    log.info(
        "%s: the shipped demo bank (%d files, recipe %s…)", out, len(record["files"]), record["recipe_sha256"][:12]
    )


def compare_with_shipped(built: Path) -> list[str]:
    """Where a bank in `built` differs from the shipped one: per file, and inside the files that
    say where (`demo_bank.json` by field, safetensors by tensor); [] when they match bit for bit
    (wall times and library versions in `demo_bank.json` aside)."""
    record = shipped_record()
    if record is None:
        raise LorabatchError("this installation ships no demo bank to compare with")
    out = []
    for path, how in differing_files(built, record["files"]).items():
        in_both = path in record["files"] and (built / path).is_file()
        if in_both and path == MANIFEST:
            out += [f"{MANIFEST}: {d}" for d in _json_differences(built / MANIFEST, SHIPPED_BANK / MANIFEST)]
        elif in_both and path.endswith(".safetensors"):
            out.append(f"{path}: {_tensor_differences(built / path, SHIPPED_BANK / path)}")
        else:
            out.append(f"{path}: {how}")
    return out


def _json_differences(a: Path, b: Path) -> list[str]:
    """Differing top-level fields of two demo_bank.json files (per task for `tasks`)."""
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    for info in (left, right):
        for key in VOLATILE_FIELDS:
            info.pop(key, None)
        for task in info.get("tasks", []):
            for key in VOLATILE_FIELDS:
                task.pop(key, None)
    diffs = []
    for key in sorted(set(left) | set(right)):
        if left.get(key) == right.get(key):
            continue
        if key == "tasks" and len(left.get(key, [])) == len(right.get(key, [])):
            for x, y in zip(left[key], right[key]):
                fields = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
                if fields:
                    diffs.append(f"tasks[{x.get('task_id')}]: {', '.join(fields)}")
        else:
            diffs.append(key)
    return diffs


def _tensor_differences(a: Path, b: Path) -> str:
    import numpy as np
    from safetensors.numpy import load_file

    left, right = load_file(str(a)), load_file(str(b))
    if set(left) != set(right):
        return f"tensor names differ ({sorted(set(left) ^ set(right))[:3]})"
    differing = {
        k: float(np.max(np.abs(left[k].astype(np.float64) - right[k])))
        for k in left
        if not np.array_equal(left[k], right[k])
    }
    if not differing:
        return "same tensors, other bytes (header or order)"
    worst = max(differing, key=differing.get)
    return f"{len(differing)} of {len(left)} tensors differ, largest |Δ| {differing[worst]:.3g} ({worst})"


def ship(bank: Path) -> dict:
    """Make the complete default demo bank in `bank` the shipped one: its files copied into the
    package and its record written. Refuses a bank whose recipe is not the code's default."""
    info = read_manifest(bank)
    if info is None:
        raise LorabatchError(f"{bank} holds no complete demo bank")
    want = recipe()
    if info.get("recipe") != want:
        raise LorabatchError(f"{bank} was not built from the default recipe of this code: rebuild it first")
    if not info.get("acceptance", {}).get("accepted"):
        log.warning("%s does not meet the bank's acceptance criteria (demo_bank.json 'acceptance')", bank)
    with atomic_dir(SHIPPED_BANK) as tmp:
        shutil.copytree(bank, tmp, dirs_exist_ok=True)
    files = file_hashes(SHIPPED_BANK)
    record = {
        "recipe": want,
        "recipe_sha256": recipe_sha256(want),
        "files": files,
        "bytes": sum((SHIPPED_BANK / p).stat().st_size for p in files),
    }
    write_json(RECORD, record)
    return record


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m lorabatch.demo.shipped BANK_DIR  (a default demo bank built by this code)")
    shipped = ship(Path(sys.argv[1]))
    print(
        f"shipped: {len(shipped['files'])} files, {shipped['bytes'] / 1e6:.1f} MB, recipe {shipped['recipe_sha256'][:12]}…"
    )
