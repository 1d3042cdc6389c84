"""Shared fixtures: tiny random models of several architectures (fast), and the real embedded model (slow)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Two threads in all, as the machines this suite is pinned on have: one process takes both, and each of `make test`'s
# two pytest-xdist workers takes one, so two workers do not oversubscribe two cores. HYPERFIT_TEST_THREADS sets it (the
# golden numbers hold at 1 and 2: tests/test_cli.py). The processes a test starts inherit it through OMP_NUM_THREADS.
TEST_THREADS = os.environ.get("HYPERFIT_TEST_THREADS") or str(
    max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
)
torch.set_num_threads(int(TEST_THREADS))
os.environ["OMP_NUM_THREADS"] = TEST_THREADS

TINY_VOCAB = 97


def tiny_config(architecture: str):
    """A 3-block, d=32 model of the named family, built from its config (no download)."""
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

    # large enough that a frozen tied head still lets blocks move the logits
    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=TINY_VOCAB - 1,
        initializer_range=0.2,
    )
    if architecture == "llama":
        return LlamaConfig(**common)
    if architecture == "qwen2":
        return Qwen2Config(**common)
    if architecture == "gemma2":
        # Gemma-style: alternating sliding-window/global attention, embedding scaling, soft-capping.
        return Gemma2Config(**common, head_dim=8, sliding_window=8, query_pre_attn_scalar=8)
    if architecture == "gpt2":
        return GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_positions=256,
            pad_token_id=0,
            eos_token_id=TINY_VOCAB - 1,
        )
    raise ValueError(architecture)


ARCHITECTURES = ["llama", "qwen2", "gemma2", "gpt2"]


@pytest.fixture(autouse=True)
def float32_unless_asked(monkeypatch):
    """model.precision=auto resolves to float32 in tests, whatever this machine's bf16 speed: a test's numbers must not
    depend on the machine it runs on. Tests of the policy pass a measurement or an explicit precision."""
    from hyperfitting import precision

    monkeypatch.setitem(precision._MEASURED, "cpu", (1.0, 1.0))


def make_tiny_model(architecture: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture), dtype=torch.float32)
    return model.eval()


@pytest.fixture(params=ARCHITECTURES)
def tiny_model(request):
    return make_tiny_model(request.param)


@pytest.fixture(scope="session")
def real_model_folder():
    """The embedded SmolLM2-135M, dequantised once into the user's cache (about 30 s the first time)."""
    from hyperfitting.models.loading import dequantised_gguf_folder, embedded_model_path

    return dequantised_gguf_folder(embedded_model_path("smollm2-135m"))


@pytest.fixture(scope="session")
def real_tokenizer(real_model_folder):
    from hyperfitting.models.loading import load_tokenizer

    return load_tokenizer(str(real_model_folder), local_only=True)


@pytest.fixture()
def real_model(real_model_folder):
    from hyperfitting.config import ModelArgs
    from hyperfitting.models.loading import load_model

    return load_model(ModelArgs(name="smollm2-135m"))[0]


WORDS = "river lamp garden window bell field house lane church wall evening light stone road hill"


TINY_FOLDER_VOCAB = 512


def train_tiny_tokenizer(folder, vocabulary: int = TINY_FOLDER_VOCAB):
    """A byte-level BPE tokenizer of ``vocabulary`` entries trained on a few sentences, saved as a Hugging Face
    tokenizer.

    Byte-level, so any text encodes (the embedded corpora too); trained here in well under a second, so no tiny test
    needs the embedded model's tokenizer (dequantising its GGUF takes half a minute).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sentences = [
        WORDS,
        WORDS.upper(),
        "The river ran past the house. A lamp was lit in the window; the bell rang at evening.",
        "She walked down the lane, over the hill, to the church by the stone wall, and the field was light.",
    ] * 4
    tokenizer.train_from_iterator(sentences, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer_folder(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory, tiny_tokenizer_folder):
    """A 2-block Llama with the tiny tokenizer, saved as a local Hugging Face folder."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=TINY_FOLDER_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for path in tiny_tokenizer_folder.iterdir():
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture()
def corpus(tmp_path):
    import random

    rng = random.Random(0)
    folder = tmp_path / "corpus"
    folder.mkdir()
    vocabulary = WORDS.split()
    for i in range(6):
        (folder / f"story{i}.txt").write_text(" ".join(rng.choice(vocabulary) for _ in range(400)) + ".\r\n")
    return folder


@pytest.fixture()
def no_seed_term():
    """A rule's own logic (its checks, Holm, its statistic) tested apart from the declared seed-to-seed spread that
    widens every one-run interval (claims/core.py: make_claim); the spread itself has tests of its own."""
    from hyperfitting.claims.core import DECLARED_SEED_SPREAD

    token = DECLARED_SEED_SPREAD.set(False)
    yield
    DECLARED_SEED_SPREAD.reset(token)


@pytest.fixture(autouse=True)
def quick_report_calibration(monkeypatch):
    """A study's report calibrates every rule (study.calibration_worlds, 400 worlds per truth): the suite's tiny studies
    check that it runs and is shown, not its rates (tests of the calibration call calibrate_rule themselves)."""
    monkeypatch.setattr("hyperfitting.report.build.CALIBRATION_WORLDS", 20)
