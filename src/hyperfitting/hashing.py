"""Content hashes of files and folders (what stage fingerprints and the model cache's checks compare), and the version
of a model's weights in memory."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


# Files whose content is known before they exist: an embedded model that is assembled from its parts on first use has
# the SHA-256 its package declares, so a stage can be fingerprinted (`hyperfit study --dry-run`) without writing it.
_KNOWN: dict[str, str] = {}


def declare_content(path: Path, sha256: str) -> None:
    """``path`` will hold content of this SHA-256 (checked when it is written): content_hash answers without reading
    it."""
    _KNOWN[str(Path(path))] = sha256[:16]


def content_hash(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files in name order (memoised per size and modification time)."""
    path = Path(path)
    if str(path) in _KNOWN:
        return _KNOWN[str(path)]
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            digest.update(f"{file.relative_to(path)}:{content_hash(file)}\n".encode())
        return digest.hexdigest()[:16]
    if not path.exists():
        return "missing"
    stat = path.stat()
    return _hash_file(str(path), stat.st_size, stat.st_mtime_ns)


def weights_version(model) -> int:
    """Changes when the model's weights do: every in-place write bumps a tensor's version counter, and a module swapped
    in brings parameters of other identities. What is remembered per model (decodes, a bf16 copy) is keyed on it."""
    return hash(tuple((id(parameter), parameter._version) for parameter in model.parameters()))


# The toolkit's modules whose code computes a stage's numbers (the report's and the claims' code does not: `hyperfit
# report` rebuilds them from the stages). Orchestration (the graph, the runner, the run folder) is left out.
COMPUTING_CODE = ("analysis", "generation", "training", "models", "data", "metrics", "pipeline/analyses.py",
                  "pipeline/baselines.py", "pipeline/controls.py", "pipeline/evaluate.py", "pipeline/retention.py",
                  "pipeline/stages.py", "pipeline/validate.py", "report/quality.py", "config.py", "stats.py",
                  "precision.py", "registry.py", "distributed.py", "figures.py")  # fmt: skip


@lru_cache(maxsize=4)
def code_version(package: Path | None = None, names: tuple[str, ...] = COMPUTING_CODE) -> str:
    """A hash of the computing code's syntax trees, docstrings left out: a change of what the code does reruns the
    stages on --resume (the package's version number did not move with it); a change of layout, comments or
    docstrings does not."""
    import ast

    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in names:
        for path in sorted((package / name).rglob("*.py")) if (package / name).is_dir() else [package / name]:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):  # docstrings are not behaviour
                body = getattr(node, "body", None)
                if (
                    isinstance(body, list)
                    and body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(getattr(body[0], "value", None), ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    body[0].value.value = ""
            digest.update(f"{path.relative_to(package)}\n{ast.dump(tree)}\n".encode())
    return digest.hexdigest()[:16]
