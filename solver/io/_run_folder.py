"""The output folder of a run: checked before the run, checkpointed while it runs, and a
manifest written first (the files the run may write) and last (the complete set).

* :func:`fingerprint` — one entry per setting that changes any output (mesh, scheme,
  initial density, model, time grid, stepping, cfl, velocity method and tolerance, cluster
  state, W2 and VTX on or off); stored in the checkpoint and the manifest, compared on
  ``--resume`` and before writing into a folder that holds a run.
* :class:`RunFolder` — every file operation of a run, done on rank 0 through
  :func:`solver.parallel.on_root`, so that an I/O error ends every rank with the same message
  instead of leaving the others waiting at a barrier.

Files (see the README, "Output files"): ``result.npz``, ``diagnostics.csv``, ``w2.csv``,
``config.toml``, ``versions.json``, ``density.bp`` (VTX), ``checkpoint.npz`` (the states and
diagnostic rows at the last saved time), ``snapshots/NNNNNN.npz`` (one per saved time, appended),
and ``manifest.json``: written first with ``"complete": false``, the names the run may write
and the fingerprint; rewritten last with ``"complete": true`` and the files of the complete
set with their sizes. A folder's files of these names are deleted or replaced only where its
manifest lists them: a file of the user's (a ``config.toml`` next to the output, say) makes
the folder unsuitable, ``--overwrite`` or not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..parallel import on_root
from ._files import atomic_write, atomic_write_text, write_csv, write_versions

__all__ = ["RunFolder", "fingerprint", "RUN_FILES"]

#: Files and folders a run writes (removed by ``overwrite`` where the manifest lists them).
RUN_FILES = ("result.npz", "diagnostics.csv", "w2.csv", "config.toml", "versions.json",
             "density.bp", "density.xdmf", "density.h5", "checkpoint.npz", "snapshots",
             "manifest.json")  # fmt: skip


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.asarray(p, dtype=float)
            scale = float(np.abs(a).max(initial=0.0)) or 1.0
            # 10 significant digits: the same digest on any number of ranks (sums over ranks
            # may differ in the last bits), a different one for any change that matters
            h.update(np.round(a / scale, 10).tobytes() + repr(a.shape).encode())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def _model_digest(m, T: float) -> str:
    if m is None:
        return "none"
    ts = np.concatenate([[0.0], m.breakpoints(T), [T]])
    mids = 0.5 * (ts[:-1] + ts[1:])  # parameters are piecewise constant between breakpoints
    return _digest(*(np.concatenate([a.ravel() for a in m.parameters(t)]) for t in mids))


def fingerprint(sm, op, rho0, models, *, T, times, velocity, method, tolerance, degree,
                stepping="", settings: dict | None = None, active=None) -> dict:  # fmt: skip
    """Digests of the settings that change a run's answer (identical on every rank);
    ``settings``: further readable entries (``{"cfl": "0.9", ...}``) taken as they are;
    ``active``: the mass tail of the active set (``evolve(active=...)``; part of the velocity
    entry, absent for the full evaluation, so the fingerprints of full runs are unchanged)."""
    cents = sm.gather(sm.centroids)
    state = sm.gather(op.cell_averages(rho0))
    fp = {
        "mesh": _digest(cents) if sm.comm.rank == 0 else None,
        "scheme": f"DG{degree}",
        "initial": _digest(state) if sm.comm.rank == 0 else None,
        "base": _model_digest(models[0], T),
        "perturbed": _model_digest(models[1], T),
        "time_grid": _digest(np.asarray(times)),
        "stepping": stepping,
        "velocity": (
            f"prescribed {getattr(velocity, '__qualname__', type(velocity).__name__)}"
            if velocity is not None
            else f"{method} tol={tolerance!r}" + ("" if active is None else f" active={active!r}")
        ),  # fmt: skip
    }
    fp.update(sm.comm.bcast({k: fp[k] for k in ("mesh", "initial")}, root=0))
    fp.update({k: str(v) for k, v in (settings or {}).items()})
    return fp


def _differs(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _describe(keys: list[str], old: dict, new: dict) -> str:
    """``"cfl (0.9 before, 0.8 now), mesh"``: the values where they are readable settings,
    the names alone where they are digests."""
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        digest = any(isinstance(v, str) and len(v) == 16 and v.isalnum() for v in (a, b))
        out.append(k if digest or a is None or b is None else f"{k} ({a} before, {b} now)")
    return ", ".join(out)


class RunFolder:
    """The output folder of a run; every method is collective (call it on every rank)."""

    def __init__(self, comm, path: str | os.PathLike):
        if not str(path).strip():
            raise ValueError("output must name a folder, got an empty path")
        self.comm, self.path = comm, Path(path)
        self.fp: dict = {}

    # -- before the run ----------------------------------------------------------------

    def prepare(self, fp: dict, *, resume: bool, overwrite: bool) -> None:
        """Check the folder and make it ready: writable, not another run's (unless
        ``overwrite``), stale temporary files of a killed write removed."""
        self.fp = fp
        on_root(self.comm, self._prepare, fp, resume, overwrite)

    def _prepare(self, fp, resume, overwrite) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise ValueError(f"--output {p} is an existing file, not a folder: choose a folder")
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ValueError(f"--output {p} is not a writable folder: {e.strerror or e}") from None
        # a run deletes and replaces only what a run recorded in manifest.json (written first)
        recorded = self._recorded()
        held = [f for f in RUN_FILES if (p / f).exists()]
        foreign = [f for f in held if f not in recorded]
        if foreign:
            raise ValueError(
                f"--output {p} holds {', '.join(foreign)}, which no run recorded in "
                f"{p / 'manifest.json'} (your own file?): a run writes files of these names, "
                "so choose a new or empty folder (--overwrite deletes only the files a run's "
                "manifest lists)"
            )
        for tmp in [*p.glob(".*.tmp"), *p.glob("snapshots/.*.tmp")]:
            if tmp.parent != p or tmp.name.split(".")[1] in {f.split(".")[0] for f in RUN_FILES}:
                tmp.unlink()  # left by a write that was killed before its rename
        old = self._stored_fingerprint()
        if resume and (p / "checkpoint.npz").exists():
            if old is not None and (diff := _differs(old, fp)):
                fix = ("run without --resume to replace it" if overwrite else
                       "run without --resume into another folder, or with --overwrite (and "
                       "without --resume) to replace it")  # fmt: skip
                raise ValueError(
                    f"--resume: the checkpoint in {p} belongs to a run with other settings "
                    f"({_describe(diff, old, fp)}): {fix}"
                )
            return
        if held and old != fp and not overwrite:
            what = (f"settings that differ: {_describe(_differs(old, fp), old, fp)}"
                    if old is not None else f"files {', '.join(held)}")  # fmt: skip
            raise ValueError(
                f"--output {p} holds another run ({what}): choose another folder, or pass "
                "--overwrite to replace it"
            )
        for f in held:  # the same run again, or overwrite: no stale file may survive
            shutil.rmtree(p / f) if (p / f).is_dir() else (p / f).unlink()
        man = {"complete": False, "files": [f for f in RUN_FILES if f != "manifest.json"],
               "fingerprint": fp}  # fmt: skip
        atomic_write_text(p / "manifest.json", json.dumps(man, indent=2) + "\n")

    def _recorded(self) -> set[str]:
        """The names a run recorded in ``manifest.json`` (with the manifest itself)."""
        f = self.path / "manifest.json"
        if not f.is_file():
            return set()
        try:
            files = json.loads(f.read_text())["files"]
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{f} is unreadable ({e}): remove it, or choose another "
                             "folder") from None  # fmt: skip
        return {str(n).rstrip("/") for n in files} | {"manifest.json"}

    def _stored_fingerprint(self) -> dict | None:
        for name, read in (("checkpoint.npz", self._ckpt_fp), ("manifest.json", self._man_fp)):
            f = self.path / name
            if f.is_file():
                try:
                    return read(f)
                except Exception as e:  # noqa: BLE001
                    raise ValueError(
                        f"{f} is unreadable ({e}): remove it, or --overwrite"
                    ) from None
        return None

    @staticmethod
    def _ckpt_fp(f: Path) -> dict:
        with np.load(f) as z:
            return json.loads(str(z["fingerprint"]))

    @staticmethod
    def _man_fp(f: Path) -> dict:
        return json.loads(f.read_text())["fingerprint"]

    def has_checkpoint(self) -> bool:
        return bool(on_root(self.comm, (self.path / "checkpoint.npz").is_file))

    # -- while it runs -------------------------------------------------------------------

    def write_text(self, name: str, text: str) -> None:
        on_root(self.comm, atomic_write_text, self.path / name, text)

    def write_versions(self) -> None:
        on_root(self.comm, write_versions, self.path / "versions.json")

    def field_writer(self, sm, names: list[str]):
        from ._vtx import FieldWriter  # DOLFINx

        return FieldWriter(sm, self.path / "density", names)

    def write_snapshot(self, i: int, fields: list[np.ndarray] | None, **extra) -> None:
        """``snapshots/{i:06d}.npz`` with ``field0``, ``field1``, ... (rank 0's data)."""
        arrays = {f"field{j}": a for j, a in enumerate(fields or [])} | extra
        path = self.path / "snapshots" / f"{i:06d}.npz"
        on_root(self.comm, atomic_write, path, lambda f: np.savez(f, **arrays))

    def read_snapshot(self, i: int) -> dict:
        """Snapshot ``i`` (rank 0 only)."""
        with np.load(self.path / "snapshots" / f"{i:06d}.npz") as z:
            return {k: z[k] for k in z.files}

    def write_checkpoint(self, *, fingerprint: dict, **arrays) -> None:
        arrays["fingerprint"] = np.array(json.dumps(fingerprint, sort_keys=True))
        path = self.path / "checkpoint.npz"
        on_root(self.comm, atomic_write, path, lambda f: np.savez(f, **arrays))

    def read_checkpoint(self, fp: dict) -> dict:
        """The checkpoint's arrays on every rank (checked against ``fp``)."""

        def read():
            try:
                with np.load(self.path / "checkpoint.npz") as z:
                    out = {k: z[k] for k in z.files}
                old = json.loads(str(out.pop("fingerprint")))
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"{self.path / 'checkpoint.npz'} is corrupt ({e}): rerun without --resume "
                    "and with --overwrite"
                ) from None
            if diff := _differs(old, fp):
                raise ValueError(
                    f"--resume: checkpoint settings differ ({_describe(diff, old, fp)})"
                )
            return out

        return on_root(self.comm, read)

    # -- at the end (rank 0, inside on_root) -----------------------------------------------

    def write_csv_local(self, name: str, columns: list[str], rows: np.ndarray) -> None:
        write_csv(self.path / name, columns, rows)

    def write_npz_local(self, name: str, arrays: dict) -> None:
        atomic_write(self.path / name, lambda f: np.savez_compressed(f, **arrays))

    def write_manifest_local(self) -> None:
        """``manifest.json``, last: the complete set of files and their sizes."""
        files = {}
        for name in RUN_FILES:
            f = self.path / name
            if f.is_file() and name != "manifest.json":
                files[name] = f.stat().st_size
            elif f.is_dir():
                files[name + "/"] = sum(g.stat().st_size for g in f.rglob("*") if g.is_file())
        man = {"complete": True, "files": files, "fingerprint": self.fp}  # the files it wrote
        atomic_write_text(self.path / "manifest.json", json.dumps(man, indent=2) + "\n")
