import json

import pytest

from hyperfitting.config import DataArgs
from hyperfitting.data.corpora import Document, clean_text, decode_bytes, load_corpus
from hyperfitting.data.splits import draw_blocks, draw_prompts, prepare_data, split_documents
from hyperfitting.errors import DataError


class CharTokenizer:
    """One token per character: enough to test splitting and drawing without a real tokenizer."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) % 1000 for c in t] for t in texts]}


def test_clean_text_normalises_reflows_and_strips_gutenberg():
    raw = (
        "The Project Gutenberg EBook of X\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
        "It was a dark\r\r\nand stormy night.\r\n\r\nSecond &amp; last\r\nparagraph.\r\n"
        "End of the Project Gutenberg EBook of X\r\nlicense text"
    )
    assert clean_text(raw) == "It was a dark and stormy night.\n\nSecond & last paragraph."


def test_latin1_fallback_and_binary_refusal():
    assert decode_bytes("café".encode("latin-1"), "f.txt") == "café"
    with pytest.raises(
        DataError, match=r"'b.bin' looks like a binary file \(it contains NUL bytes\); give a text file\."
    ):
        decode_bytes(b"\x00\x01\x02abc", "b.bin")


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(DataError, match=r"Corpus file or folder '.*nope.txt' does not exist\."):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("   \n\n")
    with pytest.raises(DataError, match=r"Corpus '.*empty.txt' is empty: no document has any text after cleaning\."):
        load_corpus(str(tmp_path / "empty.txt"))


def test_tables_and_folders(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": f"text number {i}"}) for i in range(3)))
    assert [d.text for d in load_corpus(str(tmp_path / "a.jsonl"), "body")] == [
        "text number 0",
        "text number 1",
        "text number 2",
    ]
    import pandas as pd

    pd.DataFrame({"text": ["one", "two"]}).to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame({"text": ["three"]}).to_parquet(tmp_path / "c.parquet")
    assert [d.text for d in load_corpus(str(tmp_path / "b.csv"))] == ["one", "two"]
    assert [d.text for d in load_corpus(str(tmp_path / "c.parquet"))] == ["three"]
    with pytest.raises(DataError, match="has no column 'body'"):
        load_corpus(str(tmp_path / "b.csv"), "body")
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "x.txt").write_text("first book")
    (folder / "y.txt").write_bytes("second bóok".encode("latin-1"))
    assert sorted(d.text for d in load_corpus(str(folder))) == ["first book", "second bóok"]


def test_split_keeps_groups_on_one_side():
    docs = [Document(f"chapter {i}", group=f"book{i // 3}", source=str(i)) for i in range(30)]
    split = split_documents(docs, 0.2, seed=1)
    assert {d.group for d in split.train}.isdisjoint({d.group for d in split.heldout})
    assert len(split.heldout) == 6  # 2 of 10 books, 3 chapters each
    assert split_documents(docs, 0.2, seed=1).heldout == split.heldout  # reproducible


def test_single_document_cannot_be_split():
    with pytest.raises(DataError, match="single document group"):
        split_documents([Document("x", "g", "s")], 0.2, 0)


def test_blocks_are_reproducible_and_too_small_corpus_is_refused():
    tokens = [list(range(100)), list(range(100, 150))]
    a = draw_blocks(tokens, 5, 16, seed=3, what="training")
    assert a.shape == (5, 16) and (a == draw_blocks(tokens, 5, 16, seed=3, what="training")).all()
    with pytest.raises(
        DataError, match=r"The training text has 150 tokens, enough for 9 blocks of 16 tokens, but 10 were asked"
    ):
        draw_blocks(tokens, 10, 16, seed=0, what="training")
    with pytest.raises(DataError, match="enough for 0 blocks of 256 tokens"):
        draw_blocks(tokens, 1, 256, seed=0, what="training")


def test_prompts_spread_over_documents_and_refuse_too_many():
    docs = [Document("", f"g{i}", f"d{i}") for i in range(3)]
    tokens = [list(range(i * 1000, i * 1000 + 100)) for i in range(3)]
    args = DataArgs(eval_prompts=3, prompt_tokens=4, reference_tokens=6)
    prompts = draw_prompts("c", docs, tokens, args, seed=0)
    assert sorted(p.source for p in prompts) == ["d0", "d1", "d2"]  # one per document first
    assert all(len(p.prompt_ids) == 4 and len(p.reference_ids) == 6 for p in prompts)
    assert all(p.reference_ids[0] == p.prompt_ids[-1] + 1 for p in prompts)  # the reference follows the prompt
    with pytest.raises(DataError, match=r"held-out text for only 30 prompts of 4\+6 tokens, but data.eval_prompts=31"):
        draw_prompts("c", docs, tokens, DataArgs(eval_prompts=31, prompt_tokens=4, reference_tokens=6), seed=0)


def test_no_prompt_comes_from_a_training_document(tmp_path):
    for i in range(10):
        (tmp_path / f"doc{i}.txt").write_text(" ".join(f"w{i}x{j}" for j in range(300)))
    args = DataArgs(
        corpus=str(tmp_path),
        eval_corpora=[str(tmp_path)],
        train_blocks=4,
        block_tokens=32,
        heldout_blocks=2,
        eval_prompts=2,
        prompt_tokens=8,
        reference_tokens=8,
    )
    data = prepare_data(args, CharTokenizer())
    heldout_sources = {f"{tmp_path}/{g.rsplit('/', 1)[-1]}" for g in data.manifest["heldout_groups"]}
    assert {p.source for p in data.prompts[str(tmp_path)]} <= heldout_sources


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_text_saved_with_a_byte_order_mark_is_read(encoding):
    text = "Jane Eyre — «ch. 3», naïve"
    raw = text.encode(encoding)
    if encoding in ("utf-16-le", "utf-16-be"):  # these codecs write no mark: add the one an editor would
        raw = ("\ufeff" + text).encode(encoding)
    assert decode_bytes(raw, "saved.txt").lstrip("\ufeff") == text


def test_a_byte_order_mark_over_broken_text_is_refused_with_the_encoding_named():
    with pytest.raises(DataError, match=r"'x.txt' starts with a UTF-16 byte-order mark but is not valid UTF-16"):
        decode_bytes(b"\xff\xfea\x00\x00\xd8", "x.txt")  # a lone surrogate


# ------------------------------------------------------------------------------ Hugging Face datasets (built here,
# offline)


def _rows(count=6):
    return [
        f"Paragraph {i} of the saved dataset, with enough words to count as a document: " + "word " * 20
        for i in range(count)
    ]


def test_a_dataset_saved_to_disk_is_a_corpus_and_a_dataset_dict_gives_its_split(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"body": _rows()}).save_to_disk(str(tmp_path / "one"))
    documents = load_corpus(str(tmp_path / "one"), text_column="body")
    assert (
        len(documents) == 6 and documents[0].text.startswith("Paragraph 0") and len({d.group for d in documents}) == 6
    )
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": _rows(4)}),
            "test": datasets.Dataset.from_dict({"text": _rows(2)}),
        }
    ).save_to_disk(str(tmp_path / "dict"))
    assert len(load_corpus(str(tmp_path / "dict"))) == 4
    assert len(load_corpus(f"{tmp_path / 'dict'}#test")) == 2
    with pytest.raises(DataError, match="has no split 'validation'; it has train, test"):
        load_corpus(f"{tmp_path / 'dict'}#validation")
    with pytest.raises(DataError, match="has no column 'text'.*Set data.text_column"):
        load_corpus(str(tmp_path / "one"))


def test_wikitext_style_rows_are_grouped_by_article(tmp_path):
    import datasets

    rows = [" = Alpha = \n", "", *_rows(2), " = = Section = = \n", _rows(1)[0], " = Beta = \n", *_rows(2)]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "wiki"))
    documents = load_corpus(str(tmp_path / "wiki"))
    assert [d.group for d in documents] == ["wiki/Alpha"] * 2 + ["wiki/Alpha"] + [
        "wiki/Beta"
    ] * 2  # a subsection stays in its article
    assert not any("= =" in d.text for d in documents)


def test_a_named_dataset_goes_through_load_dataset_with_split_and_streaming(tmp_path):
    """`hf:` sends a name to datasets.load_dataset, here a local folder of JSON lines (the call a hub id takes
    offline)."""
    folder = tmp_path / "jsonl"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in _rows(5)))
    (folder / "test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in _rows(3)))
    assert len(load_corpus(f"hf:{folder}")) == 5
    assert len(load_corpus(f"hf:{folder}#test")) == 3
    streamed = load_corpus(f"hf:{folder}", streaming=True, max_documents=2)
    assert [d.text for d in streamed] == [d.text for d in load_corpus(f"hf:{folder}")][:2]
    with pytest.raises(DataError, match="could not be loaded as a dataset"):
        load_corpus("no-such-user/no-such-dataset:some-config")


def test_dataset_specs_parse_name_config_revision_and_split():
    from hyperfitting.data.corpora import DatasetSpec

    assert DatasetSpec.parse("Salesforce/wikitext:wikitext-103-raw-v1#test") == DatasetSpec(
        "Salesforce/wikitext", "wikitext-103-raw-v1", None, "test"
    )
    assert DatasetSpec.parse("hf:SetFit/bbc-news@main") == DatasetSpec("SetFit/bbc-news", None, "main", "train")
    assert DatasetSpec.parse("hf:/data/folder") == DatasetSpec("/data/folder")
    with pytest.raises(Exception, match="data.max_documents"):
        DataArgs(corpus="x", streaming=True)
