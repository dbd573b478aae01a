"""The adapter registry: versioned LoRA adapters with manifests, integrity checks and promotion.

An adapter version is a directory holding peft's `adapter_config.json` and
`adapter_model.safetensors` plus ragtune's `manifest.json`: the base model id and the sha256 of its
weights, the task, the dataset's hash and size, the hyper-parameters, metrics, the domain (a
description and the embedding centroid of the training data), when it was made, and the sha256 of
each file. Versions are numbered 1, 2, ... per name; one version of a name is *promoted* and is what
`NAME` resolves to (`NAME@3` names a version). Promotions are kept as a history, so `rollback`
returns to the previously promoted version.

Two roots are searched: the user's registry (`$RAGTUNE_HOME/adapters`, writable) and the adapters
shipped in the package (read-only, `ragtune/agents/artifacts/adapters`). Promotion state always
lives in the user's registry; a shipped adapter's first version counts as promoted until then.
Adapters are loaded from safetensors only; a file whose sha256 differs from its manifest is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ragtune.errors import AdapterError

MANIFEST = "manifest.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
STATE = "promotion.json"
SHIPPED_ROOT = Path(__file__).parent / "artifacts" / "adapters"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class AdapterVersion:
    """One registered adapter version.

    Attributes:
        name: The adapter's name.
        version: Its version number.
        path: The directory holding its files.
        manifest: Its manifest.
        shipped: Whether it ships with ragtune (read-only).
    """

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    shipped: bool = False

    @property
    def ref(self) -> str:
        """`NAME@VERSION`."""
        return f"{self.name}@{self.version}"

    @property
    def task(self) -> str:
        """The task it was trained for (reader, decomposer, knowledge, custom)."""
        return str(self.manifest.get("task", ""))

    @property
    def base_sha256(self) -> str:
        """sha256 of the base weights it was trained on."""
        return str(self.manifest.get("base", {}).get("sha256", ""))


def validate_name(name: str) -> str:
    """Return `name` if it can name an adapter (lower-case letters, digits, '-', '_', '.')."""
    if not name or not set(name) <= _NAME_CHARS or name[0] in "-_.":
        raise AdapterError(f"Invalid adapter name {name!r}: use lower-case letters, digits, "
                           "'-', '_' and '.', starting with a letter or digit.")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split `NAME` or `NAME@VERSION` (VERSION as `3` or `v3`)."""
    name, sep, version = ref.strip().partition("@")
    validate_name(name)
    if not sep:
        return name, None
    digits = version.removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise AdapterError(f"Invalid adapter version in {ref!r}: expected NAME@N with N >= 1.")
    return name, int(digits)


def file_sha256(path: Path) -> str:
    """Return the sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class AdapterRegistry:
    """Versioned adapters under `root` (the user's registry) plus the shipped ones.

    Args:
        root: The writable registry directory (default `$RAGTUNE_HOME/adapters`).
        shipped_root: Read-only adapters shipped with ragtune; None searches none.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *,
                 shipped_root: Path | None = SHIPPED_ROOT) -> None:
        if root is None:
            from ragtune.paths import ragtune_home

            root = ragtune_home() / "adapters"
        self.root = Path(root)
        self.shipped_root = shipped_root

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Return every adapter name, sorted."""
        found: set[str] = set()
        for root in self._roots():
            if root.is_dir():
                found.update(p.name for p in root.iterdir()
                             if p.is_dir() and not p.name.startswith("."))
        return sorted(found)

    def versions(self, name: str) -> list[AdapterVersion]:
        """Return the versions of `name`, oldest first (user versions shadow shipped ones)."""
        validate_name(name)
        found: dict[int, AdapterVersion] = {}
        for root, shipped in ((self.shipped_root, True), (self.root, False)):
            folder = root / name if root is not None else None
            if folder is None or not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.is_dir() and path.name.startswith("v") and path.name[1:].isdigit():
                    manifest = _read_manifest(path)
                    number = int(path.name[1:])
                    found[number] = AdapterVersion(name, number, path, manifest, shipped)
        return [found[v] for v in sorted(found)]

    def promoted(self, name: str) -> AdapterVersion | None:
        """Return the promoted version of `name` (None when it has no versions)."""
        versions = {v.version: v for v in self.versions(name)}
        if not versions:
            return None
        history = self._state(name).get("history", [])
        for number in reversed(history):
            if number in versions:
                return versions[number]
        shipped = [v for v in versions.values() if v.shipped]
        return shipped[0] if shipped else None

    def resolve(self, ref: str) -> AdapterVersion:
        """Return the version `ref` names (`NAME`: the promoted one; `NAME@N`: version N).

        Raises:
            AdapterError: Unknown name or version, or no version of it is promoted.
        """
        name, number = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise AdapterError(f"Unknown adapter {name!r} (registered: {known}).")
        if number is None:
            promoted = self.promoted(name)
            if promoted is None:
                raise AdapterError(f"No version of adapter {name!r} is promoted; run "
                                   f"`ragtune adapters promote {name}@N`.")
            return promoted
        for version in versions:
            if version.version == number:
                return version
        listed = ", ".join(str(v.version) for v in versions)
        raise AdapterError(f"Adapter {name!r} has no version {number} (versions: {listed}).")

    def find(self, *, task: str | tuple[str, ...], base_sha256: str | None = None
             ) -> list[AdapterVersion]:
        """Return the promoted version of every adapter whose task is in `task` (and base)."""
        tasks = (task,) if isinstance(task, str) else task
        found = []
        for name in self.names():
            version = self.promoted(name)
            if version is None or version.task not in tasks:
                continue
            if base_sha256 is not None and version.base_sha256 != base_sha256:
                continue
            found.append(version)
        return found

    def verify(self, version: AdapterVersion, *, base_sha256: str | None = None) -> None:
        """Check `version`'s files against its manifest (and its base against `base_sha256`).

        Raises:
            AdapterError: A file is missing or its sha256 differs, a pickle file is present, or the
                adapter was trained on other base weights.
        """
        if any(version.path.glob("*.bin")) or any(version.path.glob("*.pt")):
            raise AdapterError(f"Adapter {version.ref} contains pickle files (.bin/.pt); only "
                               "safetensors adapters are loaded.")
        expected = version.manifest.get("files", {})
        for filename in ADAPTER_FILES:
            path = version.path / filename
            if filename not in expected:
                raise AdapterError(f"Adapter {version.ref}: manifest lists no sha256 of "
                                   f"{filename}.")
            if not path.is_file():
                raise AdapterError(f"Adapter {version.ref} is incomplete: {filename} is missing.")
            actual = file_sha256(path)
            if actual != expected[filename]:
                raise AdapterError(
                    f"Adapter {version.ref} is corrupt: {filename} has sha256 {actual[:12]}..., "
                    f"its manifest says {str(expected[filename])[:12]}...")
        if base_sha256 is not None and version.base_sha256 != base_sha256:
            base = version.manifest.get("base", {}).get("model_id", "?")
            raise AdapterError(
                f"Adapter {version.ref} was trained on other base weights ({base}, sha256 "
                f"{version.base_sha256[:12]}...) than the model loaded (sha256 "
                f"{base_sha256[:12]}...).")

    # -- writing ---------------------------------------------------------------------------

    def add(self, name: str, files_dir: Path, manifest: dict[str, Any], *,
            promote_if_first: bool = True) -> AdapterVersion:
        """Register the adapter in `files_dir` as the next version of `name` (moved, atomically).

        The manifest gets `name`, `version`, `created_at` and each file's sha256. The first version
        of a name is promoted unless `promote_if_first` is False.
        """
        validate_name(name)
        for filename in ADAPTER_FILES:
            if not (files_dir / filename).is_file():
                raise AdapterError(f"Cannot register {files_dir}: {filename} is missing.")
        with _LOCK, _file_lock(self.root / f".{name}.lock"):
            existing = self.versions(name)
            number = max((v.version for v in existing), default=0) + 1
            manifest = dict(manifest, name=name, version=number,
                            created_at=manifest.get("created_at") or _now())
            manifest["files"] = {f: file_sha256(files_dir / f) for f in ADAPTER_FILES}
            (files_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            target = self.root / name / f"v{number}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(files_dir), str(target))
            version = AdapterVersion(name, number, target, manifest)
            if promote_if_first and self.promoted(name) is None:
                self._push_history(name, number)
            return version

    def promote(self, ref: str) -> AdapterVersion:
        """Make the version `ref` names the promoted one (after verifying its files)."""
        version = self.resolve(ref)
        self.verify(version)
        self._push_history(version.name, version.version)
        return version

    def rollback(self, name: str) -> AdapterVersion:
        """Promote the version that was promoted before the current one."""
        validate_name(name)
        with _LOCK, _file_lock(self.root / f".{name}.lock"):
            state = self._state(name)
            history = [v for v in state.get("history", [])
                       if v in {x.version for x in self.versions(name)}]
            if len(history) < 2:
                raise AdapterError(f"Adapter {name!r} has no earlier promotion to roll back to.")
            history.pop()
            self._write_state(name, {"history": history})
        promoted = self.promoted(name)
        assert promoted is not None
        return promoted

    def remove(self, ref: str, *, force: bool = False) -> AdapterVersion:
        """Delete version `ref` (`NAME@N`); the promoted one only with `force` (then roll back)."""
        name, number = parse_ref(ref)
        if number is None:
            raise AdapterError(f"Name a version to remove: {name}@N.")
        version = self.resolve(ref)
        if version.shipped:
            raise AdapterError(f"{version.ref} ships with ragtune and cannot be removed.")
        promoted = self.promoted(name)
        if promoted is not None and promoted.version == number and not force:
            raise AdapterError(f"{version.ref} is the promoted version; promote another first or "
                               "pass --force (the previous promotion is restored).")
        with _LOCK, _file_lock(self.root / f".{name}.lock"):
            trash = version.path.with_name(f".removed-{version.path.name}-{uuid.uuid4().hex[:6]}")
            version.path.rename(trash)
            history = [v for v in self._state(name).get("history", []) if v != number]
            self._write_state(name, {"history": history})
            shutil.rmtree(trash, ignore_errors=True)
        return version

    def update_metrics(self, ref: str, metrics: dict[str, Any]) -> AdapterVersion:
        """Merge `metrics` into version `ref`'s manifest (benchmarks record their results)."""
        version = self.resolve(ref)
        if version.shipped:
            raise AdapterError(f"{version.ref} ships with ragtune and is read-only.")
        manifest = dict(version.manifest)
        manifest["metrics"] = {**manifest.get("metrics", {}), **metrics}
        _write_json(version.path / MANIFEST, manifest)
        return AdapterVersion(version.name, version.version, version.path, manifest)

    # -- internals -------------------------------------------------------------------------

    def _roots(self) -> list[Path]:
        return [r for r in (self.shipped_root, self.root) if r is not None]

    def _state(self, name: str) -> dict[str, Any]:
        try:
            state = json.loads((self.root / name / STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AdapterError(f"Cannot read the promotion state of {name!r}: {exc}") from exc
        return state if isinstance(state, dict) else {}

    def _write_state(self, name: str, state: dict[str, Any]) -> None:
        _write_json(self.root / name / STATE, state)

    def _push_history(self, name: str, number: int) -> None:
        history = [v for v in self._state(name).get("history", []) if v != number]
        self._write_state(name, {"history": [*history, number]})


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AdapterError(f"Adapter manifest {path / MANIFEST} is unreadable: {exc}") from exc
    return manifest if isinstance(manifest, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(temporary, path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _file_lock:  # noqa: N801 (used as a context manager, like open)
    """An exclusive lock on a file, across processes (fcntl)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Any = None

    def __enter__(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.path.open("a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
