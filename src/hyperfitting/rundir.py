"""A run is a folder: resolved config, logs, metrics, generations, model or adapter.

Every file is written atomically (temporary file in the same folder, then rename), so a
killed run never leaves a half-written JSON. A folder that exists is refused unless the
user asks to resume (finished stages are reused) or to overwrite it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from hyperfitting.config import RunConfig, dump_config
from hyperfitting.distributed import is_main_process, wait_for_everyone
from hyperfitting.errors import OutputError, RunDirError

from hyperfitting.layout import CONFIG, MARKER, SCHEMA_VERSION, STAGE_DONE, STAGE_STARTED

ExistingPolicy = Literal["refuse", "resume", "overwrite"]


def remove_together(*paths: Path) -> None:
    """Delete files or folders that every process has just finished with: all of them reach this point first,
    then process 0 deletes (another process deleting could pull a folder from under a write of process 0)."""
    wait_for_everyone()
    if is_main_process():
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    wait_for_everyone()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A write that fails for want of room (a full disk, a file-size limit) becomes an ``OutputError`` that
    names the file: the temporary is removed and ``path`` keeps its old content, so the run resumes.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        _raise_if_no_room(path, error)
        raise
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs are meant to be shared
    try:
        yield Path(tmp)
        _injected_fault(path)
        os.replace(tmp, path)
    except OSError as error:
        _raise_if_no_room(path, error)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


NO_ROOM = {errno.EFBIG, errno.ENOSPC, errno.EDQUOT}


def _raise_if_no_room(path: Path, error: OSError) -> None:
    if error.errno not in NO_ROOM:
        return
    raise OutputError(
        f"Could not write {path}: {error.strerror}. Nothing was half-written (each file is written beside "
        "its place and moved there only when complete), and finished stages are kept: make room (or raise "
        "the file-size limit), then run the same command with --resume."
    ) from error


# Fault injection, for the tests only: SIGKILL this process at the first output it completes inside the named
# stage folder (after the temporary is written, before it replaces the target), as a power cut would.
FAULT_ENV = "HYPERFIT_TEST_KILL_IN"


def _injected_fault(path: Path) -> None:
    stage = os.environ.get(FAULT_ENV)
    if stage and stage in path.parts and path.name != STAGE_STARTED:  # inside the stage's work, not its bookkeeping
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def write_text(path: str | Path, text: str) -> None:
    if not is_main_process():
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
    return rows


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# Open lock files of the run folders this process writes, kept open (and so locked) until it exits.
_HELD_LOCKS: dict[Path, Any] = {}


def lock_run_dir(run_dir: Path) -> None:
    """Take the run folder's advisory lock for the rest of this process, or refuse at once if another process holds it.

    The lock file sits beside the folder (`.NAME.lock`), so --overwrite can delete the folder while
    holding it. The operating system releases the lock when its process ends, however it ends: a
    lock left by a killed command is simply taken over.
    """
    import fcntl

    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD_LOCKS:
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir.parent / f".{run_dir.name}.lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirError(
            f"Run folder '{run_dir}' is in use by {holder}. Wait for that command to finish (or stop it), "
            f"or choose another run_dir=..."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    handle.flush()
    _HELD_LOCKS[run_dir] = handle


def prepare_run_dir(config: RunConfig, existing: ExistingPolicy = "refuse") -> Path:
    """Lock, create (or reopen) the run folder and write the resolved config into it (rank 0 decides; the others
    wait)."""
    run_dir = Path(config.run_dir)
    if not is_main_process():
        wait_for_everyone()
        return run_dir
    try:
        lock_run_dir(run_dir)
        return _prepare_run_dir(run_dir, config, existing)
    finally:
        wait_for_everyone()


def _prepare_run_dir(run_dir: Path, config: RunConfig, existing: ExistingPolicy) -> Path:
    if run_dir.exists() and any(run_dir.iterdir()):
        if existing == "refuse":
            raise RunDirError(
                f"Run folder '{run_dir}' already exists. Pass --resume to continue it (finished stages are reused) "
                f"or --overwrite to delete it and start again, or choose another run_dir=..."
            )
        if not (run_dir / MARKER).exists():
            raise RunDirError(
                f"'{run_dir}' exists and is not a hyperfit run folder; refusing to touch it. Choose another run_dir=..."
            )
        if existing == "overwrite":
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / MARKER).exists():
        write_json(run_dir / MARKER, {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "schema_version": SCHEMA_VERSION})
    write_text(run_dir / CONFIG, dump_config(config))
    return run_dir


class Stage:
    """A unit of work whose outputs live in ``run_dir/name``; skipped when done with the same inputs.

    ``fingerprint`` summarises the config and inputs the stage depends on; a stage marked
    done with another fingerprint is redone.
    """

    def __init__(self, run_dir: Path, name: str, fingerprint: str, inputs: dict[str, str] | None = None):
        self.dir = run_dir / name
        self.name = name
        self.fingerprint = fingerprint
        self.inputs = inputs or {}
        """What the fingerprint hashes, kept beside the outputs so a later plan can say what changed."""
        self._done_file = self.dir / STAGE_DONE
        # Processes enter (and leave, see finish) each stage together, so all of them see the
        # same answer to `done` and none reads a file process 0 is still writing.
        wait_for_everyone()

    @property
    def done(self) -> bool:
        if not self._done_file.exists():
            return False
        return read_json(self._done_file).get("fingerprint") == self.fingerprint

    def start(self) -> Path:
        """Open the stage folder. Partial work (a training checkpoint) is kept only if it was made with the same
        inputs."""
        started_file = self.dir / STAGE_STARTED
        if not is_main_process():
            self.dir.mkdir(parents=True, exist_ok=True)
            return self.dir
        if started_file.exists() and read_json(started_file).get("fingerprint") != self.fingerprint:
            shutil.rmtree(self.dir)  # made with other inputs: resuming it would mix two configs
        elif self._done_file.exists():
            self._done_file.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        for orphan in self.dir.glob(".*.tmp"):  # the temporary of a write that a killed process never finished
            orphan.unlink()
        write_json(started_file, {"fingerprint": self.fingerprint, "inputs": self.inputs})
        return self.dir

    def finish(self, wall_seconds: float, **extra: Any) -> None:
        import resource

        # ru_maxrss is the process's peak so far (KiB on Linux): a stage's own peak is at most this.
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        write_json(
            self._done_file,
            {
                "fingerprint": self.fingerprint,
                "wall_seconds": round(wall_seconds, 2),
                "process_peak_memory_mib": round(peak_mib),
                "inputs": self.inputs,
                **extra,
            },
        )
        wait_for_everyone()
