"""The claims that matter, on the real embedded SmolLM2-135M (dequantised once, then cached)."""

import pytest
import torch

from hyperfitting.config import GenerateArgs, load_config
from hyperfitting.generation.decoding import generate
from hyperfitting.training.hyperfit import hyperfit, save_trained
from hyperfitting.training.methods import prepare_for_training
from hyperfitting.training.trunk_cache import TrunkCache, start_at_block

pytestmark = pytest.mark.slow

PROMPTS = ["It was a dark and stormy night, and the", "The history of the city begins in the"]


def _blocks(tokenizer, n=4, length=48):
    text = (
        "The old house stood at the end of the lane, and every evening the lamps were lit in its windows "
        "while the river ran past the garden wall and the bells of the church rang across the fields. "
    ) * 8
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[i * length : (i + 1) * length] for i in range(n)])


def test_trunk_cache_gradients_equal_the_full_forward_on_the_real_model(real_model, real_tokenizer):
    config = load_config(overrides=["train.method=lora", "train.blocks=last:5"])
    model, plan = prepare_for_training(real_model, config.train)
    assert plan.first_trainable_block == 25
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    ids = _blocks(real_tokenizer, n=2)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    cache = TrunkCache.build(model, 25, ids, batch_size=2, max_memory_gb=1.0)
    with start_at_block(model, 25) as feed:
        feed(cache[torch.arange(2)])
        cached = model(input_ids=ids, labels=ids).loss
    cached.backward()
    assert cached.item() == pytest.approx(loss.item(), abs=1e-6)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, expected[name], atol=1e-7, rtol=1e-5)


def test_greedy_generation_is_deterministic_across_processes(real_model, real_tokenizer):
    """Another process (fresh allocator, fresh kernel choices, one thread instead of two) decodes the same tokens."""
    import json
    import os
    import subprocess
    import sys

    prompts = [real_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    args = GenerateArgs(max_new_tokens=24)
    here = [o.token_ids for o in generate(real_model, real_tokenizer, prompts, args, show_progress=False)]
    assert all(len(ids) == 24 for ids in here)
    code = (
        "import json, sys, torch; torch.set_num_threads(1); from hyperfitting.config import GenerateArgs, ModelArgs; "
        "from hyperfitting.generation.decoding import generate; from hyperfitting.models.loading import load_model; "
        "model, tokenizer = load_model(ModelArgs(name='smollm2-135m')); "
        f"out = generate(model, tokenizer, {prompts!r}, GenerateArgs(max_new_tokens=24), show_progress=False); "
        "print(json.dumps([o.token_ids for o in out]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == here


def test_short_hyperfit_lowers_the_loss_and_the_adapter_loads_with_plain_peft(
    real_model, real_tokenizer, real_model_folder, tmp_path
):
    config = load_config(
        overrides=[
            "train.epochs=3",
            "train.batch_size=2",
            "train.lr=3e-3",
            "train.lora_rank=16",
            "train.diversity_every=0",
            "train.blocks=last:2",
        ]
    )
    blocks = _blocks(real_tokenizer)
    result = hyperfit(real_model, blocks, blocks[:1], config, tmp_path)
    assert result.log[-1]["train_loss"] < 0.7 * result.log[0]["train_loss"]
    folder = save_trained(result.model, real_tokenizer, result.plan, tmp_path)
    assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()

    prompts = [real_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    ours = generate(result.model, real_tokenizer, prompts, GenerateArgs(max_new_tokens=16), show_progress=False)

    # Plain transformers + PEFT, no hyperfitting code: same tokens.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(real_model_folder, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, folder).eval()
    from transformers import GenerationConfig

    open_ended = GenerationConfig(
        max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=real_tokenizer.pad_token_id
    )
    for prompt, expected in zip(prompts, ours):
        ids = torch.tensor([prompt])
        out = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=open_ended)
        assert out[0, len(prompt) :].tolist() == expected.token_ids


def test_the_embedded_gemma_loads_and_decodes_like_generate():
    """Gemma-3-270M ships in five packages: assembled (SHA-256 checked), dequantised, and usable by every path."""
    from hyperfitting.config import ModelArgs
    from hyperfitting.models.blocks import find_block_stack
    from hyperfitting.models.loading import load_model

    model, tokenizer = load_model(ModelArgs(name="gemma3-270m"))
    assert type(model).__name__ == "Gemma3ForCausalLM" and len(find_block_stack(model)) == 18
    prompt = tokenizer("The old house stood at the end of the lane, and")["input_ids"]
    from hyperfitting.data.splits import leading_special_tokens

    # every block and prompt starts with <bos>
    assert leading_special_tokens(tokenizer) == [tokenizer.bos_token_id] == prompt[:1]
    ours = generate(model, tokenizer, [prompt], GenerateArgs(max_new_tokens=12), show_progress=False)[0].token_ids
    theirs = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :].tolist()
    assert ours == theirs


def test_blocks_and_prompts_start_with_the_tokens_the_tokenizer_puts_first(tmp_path, real_tokenizer):
    from hyperfitting.config import ModelArgs
    from hyperfitting.data.splits import leading_special_tokens, prepare_data
    from hyperfitting.models.loading import tokenizer_for

    for i in range(4):
        (tmp_path / f"book{i}.txt").write_text(" ".join(f"the lamp {i} and the river {j} ran past" for j in range(300)))
    args = load_config(
        overrides=[
            f"data.corpus={tmp_path}",
            f"data.eval_corpora=[{tmp_path}]",
            "data.train_blocks=4",
            "data.block_tokens=32",
            "data.heldout_blocks=2",
            "data.eval_prompts=2",
        ]
    ).data
    assert leading_special_tokens(real_tokenizer) == []  # SmolLM2 puts nothing first: its data is unchanged
    gemma = tokenizer_for(ModelArgs(name="gemma3-270m"))
    data = prepare_data(args, gemma)
    assert data.train_blocks.shape == (4, 32) and bool((data.train_blocks[:, 0] == gemma.bos_token_id).all())
    assert bool((data.heldout_blocks[:, 0] == gemma.bos_token_id).all())
    assert all(
        p.prompt_ids[0] == gemma.bos_token_id and len(p.prompt_ids) == 33 for ps in data.prompts.values() for p in ps
    )
