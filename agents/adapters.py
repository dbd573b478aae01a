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
lives in the user's registry; a shipped adapter's newest version counts as promoted until then (a
release that ships a better version makes it the default; `ragtune adapters promote NAME@1` keeps
the earlier one).
A shipped version's number belongs to it: a user folder with the same name and number (a copy made
by hand) is never used in its place, and is reported as ignored; new user versions are numbered
after every existing one, shipped ones included. Adapters are loaded from safetensors only; a file
whose sha256 differs from its manifest is refused.

A damaged version (unreadable manifest, missing or corrupt file, a pickle) stays listed with what is
wrong (`AdapterVersion.damage`, `check`). Naming it (`NAME@N`, or `NAME` when it is the promoted
one) fails with that reason; the automatic choice of adapters (`find`) skips it with a logged
warning and keeps every other adapter working.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ragtune.errors import AdapterError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
STATE = "promotion.json"
SHIPPED_ROOT = Path(__file__).parent / "artifacts" / "adapters"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_LOCK = threading.Lock()
_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


@dataclass(frozen=True)
class AdapterVersion:
    """One registered adapter version.

    Attributes:
        name: The adapter's name.
        version: Its version number.
        path: The directory holding its files.
        manifest: Its manifest.
        shipped: Whether it ships with ragtune (read-only).
        damage: What makes it unusable, as found without hashing (an unreadable manifest, a
            missing file, a pickle), or what hid it (a user copy of a shipped version); None
            when nothing is wrong so far (`AdapterRegistry.check` also compares the sha256s).
    """

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    shipped: bool = False
    damage: str | None = None

    @property
    def ref(self) -> str:
        """`NAME@VERSION`."""
        return f"{self.name}@{self.version}"

    @property
    def hidden(self) -> bool:
        """Whether this is a user folder that a shipped version of the same number hides."""
        return self.damage is not None and self.damage.startswith("hidden by ")

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
        """Return every adapter name, sorted (folders that cannot name an adapter are skipped)."""
        found: set[str] = set()
        for root in self._roots():
            if root.is_dir():
                for path in root.iterdir():
                    if not path.is_dir() or path.name.startswith("."):
                        continue
                    if _is_valid_name(path.name):
                        found.add(path.name)
                    else:
                        _warn_once(f"Ignoring the adapter folder {path}: {path.name!r} is not a "
                                   "valid adapter name.")
        return sorted(found)

    def versions(self, name: str) -> list[AdapterVersion]:
        """Return the versions of `name`, oldest first, damaged ones included (see `damage`)."""
        return sorted(self._scan(name)[0].values(), key=lambda v: v.version)

    def ignored(self, name: str) -> list[AdapterVersion]:
        """Return the user folders of `name` that a shipped version of the same number hides."""
        return self._scan(name)[1]

    def check(self, version: AdapterVersion, *, base_sha256: str | None = None) -> str | None:
        """Return what is wrong with `version` (files, sha256s, base), or None when it is intact."""
        try:
            self.verify(version, base_sha256=base_sha256)
        except AdapterError as exc:
            return str(exc)
        return None

    def promoted(self, name: str) -> AdapterVersion | None:
        """Return the promoted version of `name` (None when it has no versions).

        Raises:
            AdapterError: The promotion state of `name` is unreadable.
        """
        versions = {v.version: v for v in self.versions(name)}
        if not versions:
            return None
        history = self._state(name).get("history", [])
        for number in reversed(history):
            if number in versions:
                return versions[number]
        shipped = [v for v in versions.values() if v.shipped]  # oldest first
        return shipped[-1] if shipped else None

    def resolve(self, ref: str, *, allow_damaged: bool = False) -> AdapterVersion:
        """Return the version `ref` names (`NAME`: the promoted one; `NAME@N`: version N).

        Args:
            ref: `NAME` or `NAME@N`.
            allow_damaged: Return a damaged version instead of refusing it (to show or remove it).

        Raises:
            AdapterError: Unknown name or version, no version of it is promoted, or the version is
                damaged.
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
            found = promoted
        else:
            match = [v for v in versions if v.version == number]
            if not match:
                listed = ", ".join(str(v.version) for v in versions)
                raise AdapterError(f"Adapter {name!r} has no version {number} "
                                   f"(versions: {listed}).")
            found = match[0]
        if found.damage is not None and not allow_damaged:
            raise AdapterError(_damaged_message(found, promoted=number is None))
        return found

    def find(self, *, task: str | tuple[str, ...], base_sha256: str | None = None
             ) -> list[AdapterVersion]:
        """Return the promoted version of every adapter whose task is in `task` (and base).

        This is the automatic choice, so nothing damaged stops it: an adapter whose promotion
        state, manifest or files are damaged is skipped with a logged warning (once per process),
        as is a user folder that a shipped version hides; the other adapters are still found.
        """
        tasks = (task,) if isinstance(task, str) else task
        found = []
        for name in self.names():
            versions, hidden = self._scan(name)
            for damaged in [*hidden, *versions.values()]:
                if damaged.damage is not None:
                    _warn_once(f"{_damaged_message(damaged, promoted=False)} Skipping it.")
            try:
                version = self.promoted(name)
            except AdapterError as exc:
                _warn_once(f"Skipping adapter {name!r}: {exc}")
                continue
            if version is None or version.damage is not None:
                continue
            if version.task not in tasks or (base_sha256 is not None and
                                             version.base_sha256 != base_sha256):
                continue
            problem = self.check(version)
            if problem is not None:
                _warn_once(f"Skipping adapter {name!r} (its promoted version): {problem} Fix "
                           "it, remove it or promote another version.")
                continue
            found.append(version)
        return found

    def verify(self, version: AdapterVersion, *, base_sha256: str | None = None) -> None:
        """Check `version`'s files against its manifest (and its base against `base_sha256`).

        Raises:
            AdapterError: The manifest is unreadable, a file is missing or its sha256 differs, a
                pickle file is present, the folder is a user copy hidden by a shipped version, or
                the adapter was trained on other base weights.
        """
        # The files are looked at again: they may have changed since `version` was read.
        problem = _hidden_by(version) or _file_problem(version.path, version.manifest)
        if problem is not None:
            raise AdapterError(f"Adapter {version.ref} {problem}.")
        expected = version.manifest["files"]
        for filename in ADAPTER_FILES:
            actual = file_sha256(version.path / filename)
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
            number = max(self._folder_numbers(name), default=0) + 1
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
            present = {x.version for x in self.versions(name)}
            history = [v for v in state.get("history", []) if v in present]
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
        version = self.resolve(ref, allow_damaged=True)
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

    def _scan(self, name: str) -> tuple[dict[int, AdapterVersion], list[AdapterVersion]]:
        """Read every version folder of `name`: (versions by number, user folders hidden)."""
        validate_name(name)
        found = {v.version: v for v in _read_versions(self.shipped_root, name, shipped=True)}
        hidden = []
        for version in _read_versions(self.root, name, shipped=False):
            shipped = found.get(version.version)
            if shipped is None:
                found[version.version] = version
            else:
                hidden.append(dataclasses.replace(version, damage=f"hidden by the shipped "
                                                  f"{shipped.ref}"))
        return found, hidden

    def _folder_numbers(self, name: str) -> list[int]:
        return [int(p.name[1:]) for root in self._roots() if (root / name).is_dir()
                for p in (root / name).iterdir() if _is_version_folder(p)]

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


def _read_versions(root: Path | None, name: str, *, shipped: bool) -> list[AdapterVersion]:
    folder = root / name if root is not None else None
    if folder is None or not folder.is_dir():
        return []
    versions = []
    for path in folder.iterdir():
        if _is_version_folder(path):
            manifest, problem = _read_manifest(path)
            versions.append(AdapterVersion(name, int(path.name[1:]), path, manifest, shipped,
                                           problem or _file_problem(path, manifest)))
    return versions


def _is_version_folder(path: Path) -> bool:
    return path.is_dir() and path.name.startswith("v") and path.name[1:].isdigit() and \
        int(path.name[1:]) >= 1


def _is_valid_name(name: str) -> bool:
    try:
        validate_name(name)
    except AdapterError:
        return False
    return True


def _read_manifest(path: Path) -> tuple[dict[str, Any], str | None]:
    """Return (the manifest, None), or ({}, what is wrong with it)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, f"is incomplete: {MANIFEST} is missing"
    except (OSError, ValueError) as exc:
        return {}, f"has an unreadable {MANIFEST} ({type(exc).__name__}: {exc})"
    if not isinstance(manifest, dict) or not all(
            isinstance(manifest.get(key, {}), dict) for key in ("files", "base", "metrics")):
        return {}, f"has a {MANIFEST} that is not a ragtune adapter manifest"
    return manifest, None


def _file_problem(path: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with a version's files short of hashing them, or None."""
    if not manifest:
        return _read_manifest(path)[1] or f"has an empty {MANIFEST}"
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        return "contains pickle files (.bin/.pt); only safetensors adapters are loaded"
    expected = manifest.get("files", {})
    for filename in ADAPTER_FILES:
        if filename not in expected:
            return f"lists no sha256 of {filename} in its {MANIFEST}"
        if not (path / filename).is_file():
            return f"is incomplete: {filename} is missing"
    return None


def _hidden_by(version: AdapterVersion) -> str | None:
    if version.hidden:
        return (f"in {version.path} is not used: it is {version.damage} of the same number "
                "(shipped versions are read-only; register a changed copy as a new version)")
    return None


def _damaged_message(version: AdapterVersion, *, promoted: bool) -> str:
    hidden = _hidden_by(version)
    if hidden is not None:
        return f"Adapter {version.ref} {hidden}."
    where = "shipped with ragtune" if version.shipped else f"in {version.path}"
    message = f"Adapter {version.ref} ({where}) {version.damage}."
    if promoted:
        message += (f" It is the promoted version of {version.name!r}: promote another "
                    f"(`ragtune adapters promote {version.name}@N`) or remove it.")
    return message


def _warn_once(message: str) -> None:
    """Log `message` as a warning the first time this process sees it."""
    with _WARNED_LOCK:
        if message in _WARNED:
            return
        _WARNED.add(message)
    log.warning(message)


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
