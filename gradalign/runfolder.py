"""The run folder: its layout, one writer at a time, and what a resume may keep.

Owns: the paths inside a run folder (`shards/run.json`, `shards/NNNNN/` with the four tables and
`shard.json`, the lock file `.gradalign.lock`); `check_writable` (an output path that cannot be
written is refused before any model loads); `RunLock` (an OS-level `flock` held for the whole run,
released by the kernel when the process dies, so a killed run never leaves the folder stuck; a
second writer is refused naming the holder's pid and host); `open_run` (a fresh folder, or a resume
of the same config); the shard plan on resume (`resume_shard_size`: the size the run started with
is reused; `finished_shards`: each finished shard must hold the planned questions, and one whose
files do not read is recomputed, checked before any shard is computed); `write_run_info` and
`write_shard`; `writing` (an OSError while writing, e.g. a full disk, becomes one line saying how
to resume); `RunInterrupted` (Ctrl-C, with how many shards were kept); recognising and clearing a
previous demo run (`clear_previous_demo`: only the tool's own files, never anything else).

Does not own computing shards or the manifest's contents (`gradalign.engine`), the table schemas,
the atomic writers and `load` (`gradalign.tables`), or input checks (`gradalign.preflight`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from gradalign.errors import GradalignError
from gradalign.tables import SCHEMA_VERSION, TABLES, RunFolderError, write_json, write_table

log = logging.getLogger(__name__)

LOCK_NAME = ".gradalign.lock"
RUN_INFO = Path("shards") / "run.json"
SHARD_KEYS = ("config_fingerprint", "questions", "selection", "prefix_hashes", "continuations")
DEMO_CONFIG = "demo.toml"  # `gradalign demo` runs data/configs/demo.toml, whose run.name is "demo"


class ShardSizeError(GradalignError, ValueError):
    """The shard size is not a positive number of questions."""


class OutputError(GradalignError, OSError):
    """The output path cannot be written (a file in the way, no permission, a full disk)."""


class RunLocked(RunFolderError):
    """Another process is writing the run folder."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; finished shards are kept. `str()` is the line to show."""

    def __init__(self, kept: int | None, total: int | None) -> None:
        super().__init__(f"interrupted; {kept} of {total} shards kept; rerun with --resume" if total is not None
                         else "interrupted before the first shard; nothing new written")


@dataclass
class Tally:
    """Shards kept so far (finished before, or written by this run) out of the plan's total."""

    kept: int = 0
    total: int | None = None


def shard_dir(out: Path, k: int) -> Path:
    return out / "shards" / f"{k:05d}"


def check_shard_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ShardSizeError(f"shard size must be at least 1 question, got {size} (--shard-size / shard_size=)")


def check_writable(path: str | os.PathLike, *, kind: str = "folder") -> None:
    """Refuse an output `path` (a folder, or a file with kind="file") that cannot be written, before
    any work: it must be absent or of that kind, its nearest existing ancestor must be a folder, and
    a probe file must be creatable and writable there (a read-only or full file system fails)."""
    path = Path(path)
    try:
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise OutputError(f"{path}: exists and is not a folder; choose a folder for the output" if kind == "folder"
                              else f"{path}: is a folder; give the path of a file to write")
        anc = path if path.is_dir() else path.parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
    except OSError as e:  # e.g. a parent folder that may not be searched (Path.exists raises PermissionError)
        raise OutputError(f"{path}: cannot reach it ({e.strerror or e}); choose another output path") from None
    if not anc.is_dir():
        raise OutputError(f"{path}: {anc} is a file, not a folder; choose another output path")
    probe = anc / f".gradalign-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise OutputError(f"{path}: cannot write in {anc} ({e.strerror or e}); choose a writable output path") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class RunLock:
    """An exclusive `flock` on OUT/.gradalign.lock, held while the run writes (a context manager).

    The pid and host of the holder are written inside for the refusal message. The kernel drops the
    lock when the holder dies, however it dies. The file is removed on release; the folders this
    lock created are removed too if nothing else was written in them.
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []  # folders that did not exist, deepest first

    def __enter__(self) -> RunLock:
        d = self.out
        while not d.exists() and d != d.parent:
            self.created.append(d)
            d = d.parent
        for _ in range(10):
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a refused writer removed the folder it had just created
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                self._remove_created()
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"{self.path}: cannot lock ({e.strerror or e})") from None
                raise RunLocked(f"{self.out}: another gradalign run is writing here ({holder or 'pid unknown'}); "
                                "wait for it to finish or choose another output folder") from None
            if self._is_current(fd):  # not a file a finishing holder unlinked after we opened it
                break
            os.close(fd)
        else:
            raise OutputError(f"{self.path}: could not take the lock (the file kept being replaced)")
        self.fd = fd
        with contextlib.suppress(OSError):  # who holds it is only for a refusal message
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return self

    def _is_current(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _remove_created(self) -> None:
        for d in self.created:
            try:
                d.rmdir()
            except OSError:
                break

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still holding the lock: see `_is_current`
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._remove_created()


def _read_json(p: Path) -> dict:
    """A JSON object from `p`; ValueError (naming the problem) if it does not parse as one."""
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return d


def open_run(out: Path, fingerprint: str, resume: bool) -> dict | None:
    """Check that `out` can take this run: None for an empty folder (the lock file aside), else
    the recorded run (shards/run.json; {} when it is missing or does not parse) being resumed.
    Refuses a non-empty folder without `resume`, and a run made with another config."""
    if not any(p.name != LOCK_NAME for p in out.iterdir()):
        return None
    if not resume:
        raise RunFolderError(f"{out}: output folder is not empty; continue the run in it with --resume "
                             "(Python: resume=True), or choose a new folder")
    p = out / RUN_INFO
    if not p.exists():
        return {}
    try:
        info = _read_json(p)
    except (ValueError, OSError) as e:
        log.warning("%s: %s; rewriting it (each finished shard is checked on its own)", p, e)
        return {}
    if info.get("config_fingerprint") != fingerprint:
        raise RunFolderError(f"{out}: existing shards were made with a different config; cannot resume into it "
                             "(choose a new folder)")
    return info


def resume_shard_size(out: Path, recorded: dict | None, requested: int) -> int:
    """The shard size a resumed run started with (shards/run.json, else the first shard's question
    count), which replaces `requested` (`finished_shards` logs it once the plan is checked): another
    size would re-plan which questions the finished shards hold."""
    if recorded is None:
        return requested
    size = recorded.get("shard_size")
    if size is None:
        with contextlib.suppress(ValueError, OSError, TypeError):
            size = len(_read_json(shard_dir(out, 0) / "shard.json")["questions"])
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else requested


def _short(ids: Sequence[Any]) -> str:
    ids = list(ids) if isinstance(ids, (list, tuple)) else [ids]
    return ", ".join(map(str, ids[:3])) + (f", ... ({len(ids)})" if len(ids) > 3 else "")


def _unreadable(d: Path, info: dict) -> str | None:
    """Why a finished shard's tables cannot be kept (a Parquet footer that does not read, or a row
    count other than shard.json recorded), or None. Reads only the Parquet metadata."""
    import pyarrow.parquet as pq

    for name in TABLES:
        p = d / f"{name}.parquet"
        try:
            meta = pq.read_metadata(p)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a missing, empty or truncated file
            return f"{p.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        rows = meta.num_rows
        version = (meta.metadata or {}).get(b"gradalign.schema_version", b"?").decode()
        if version != SCHEMA_VERSION:  # written by another gradalign: its columns may differ
            return f"{p.name}: schema version {version}, this gradalign writes {SCHEMA_VERSION}"
        expected = (info.get("rows") or {}).get(name)
        if expected is not None and rows != expected:
            return f"{p.name}: {rows} rows, shard.json recorded {expected}"
    return None


def finished_shards(out: Path, shards: Sequence[Sequence[dict]], row_id: Callable[[dict], str], fingerprint: str,
                    *, shard_size: int, requested: int) -> dict[int, dict]:
    """The finished shards a resume keeps: index -> shard.json contents. A shard made with another
    config, or holding other questions than the plan puts there, is refused; one whose shard.json
    or tables do not read is left out (recomputed), with a log line naming the file. A shard size
    other than the `requested` one (see `resume_shard_size`) is logged once the plan is checked."""
    done: dict[int, dict] = {}
    for k, shard in enumerate(shards):
        p = shard_dir(out, k) / "shard.json"
        if not p.exists():
            continue
        try:
            info = _read_json(p)
            missing = [key for key in SHARD_KEYS if key not in info]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except (ValueError, OSError) as e:
            log.warning("shard %d/%d: %s: %s; recomputing the shard", k + 1, len(shards), p, e)
            continue
        if info["config_fingerprint"] != fingerprint:
            raise RunFolderError(f"{p}: made with a different config; cannot resume into {out} (choose a new folder)")
        planned = [row_id(q) for q in shard]
        if info["questions"] != planned:
            raise RunFolderError(f"{p}: holds questions {_short(info['questions'])} where this run plans {_short(planned)} "
                                 "(the task changed?); cannot resume into this folder: choose a new folder")
        bad = _unreadable(p.parent, info)
        if bad:
            log.warning("shard %d/%d: %s/%s; recomputing the shard", k + 1, len(shards), p.parent, bad)
            continue
        done[k] = info
    if shard_size != requested:
        log.warning("%s: resuming with the shard size the run started with (%d), not %d", out, shard_size, requested)
    return done


def write_run_info(out: Path, fingerprint: str, config: dict, config_source: str, shard_size: int) -> None:
    """shards/run.json: what resume checks (fingerprint, shard size) and demo recognition reads."""
    write_json({"config_fingerprint": fingerprint, "shard_size": shard_size, "config_source": config_source,
                "config": config}, out / RUN_INFO)


def write_shard(out: Path, k: int, tables: dict, info: dict, fingerprint: str) -> None:
    """One shard's four tables, then its shard.json (written last: its presence marks it finished)."""
    d = shard_dir(out, k)
    rows = {name: write_table(name, tables[name], d / f"{name}.parquet", {"config_fingerprint": fingerprint})
            for name in TABLES}
    write_json({**info, "rows": rows}, d / "shard.json")


@contextlib.contextmanager
def writing(out: Path, what: str, tally: Tally) -> Iterator[None]:
    """Turn an OSError while writing `what` (a full disk, a folder made read-only) into one line."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"{out}: cannot write {what} ({e.strerror or e}); {tally.kept} of {tally.total} shards kept; "
                          "free space (or fix the folder), then rerun with --resume") from None


_TMP = re.compile(r"\.\d+\.tmp$")  # a temp file of the atomic writers, left by a killed run


def _foreign_files(out: Path) -> list[str]:
    """Paths under `out` that a `diagnose` run does not write (relative to `out`)."""
    top = {f"{name}.parquet" for name in TABLES} | {"manifest.json", LOCK_NAME}
    in_shard = {f"{name}.parquet" for name in TABLES} | {"shard.json"}
    foreign = []
    for p in sorted(out.iterdir()):
        if p.name == "shards" and p.is_dir():
            for s in sorted(p.iterdir()):
                if re.fullmatch(r"\d{5}", s.name) and s.is_dir():
                    foreign += [f"shards/{s.name}/{f.name}" for f in sorted(s.iterdir())
                                if not (f.is_file() and _TMP.sub("", f.name) in in_shard)]
                elif not (s.is_file() and _TMP.sub("", s.name) == "run.json"):
                    foreign.append(f"shards/{s.name}")
        elif not (p.is_file() and _TMP.sub("", p.name) in top):
            foreign.append(p.name)
    return foreign


def _is_demo(out: Path) -> bool:
    for p in (out / RUN_INFO, out / "manifest.json"):
        with contextlib.suppress(ValueError, OSError, TypeError, AttributeError):
            d = _read_json(p)
            if "config_source" in d:
                return Path(str(d["config_source"])).name == DEMO_CONFIG and d["config"]["run"]["name"] == "demo"
    return False


def clear_previous_demo(out: str | os.PathLike) -> None:
    """Empty `out` for `gradalign demo` if it holds a previous demo run and nothing else; refuse a
    folder holding anything else. An absent or empty folder is left as it is."""
    out = Path(out)
    if not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir()):
        return
    if not _is_demo(out):
        raise RunFolderError(f"{out}: not a previous demo run; gradalign demo replaces only its own runs: "
                             "choose another --out (or remove the folder yourself)")
    foreign = _foreign_files(out)
    if foreign:
        raise RunFolderError(f"{out}: holds files gradalign did not write ({_short(foreign)}); gradalign demo replaces "
                             "only its own runs: choose another --out (or move those files)")
    with RunLock(out):
        for p in sorted(out.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if p.name == LOCK_NAME and p.parent == out:
                continue
            p.rmdir() if p.is_dir() else p.unlink()
