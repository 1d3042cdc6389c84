"""The GPU check: what one GPU does with the paper's models, measured in one process, no download.

Models of TinyLlama-1.1B's and Llama-3.1-8B's shapes are built with random weights directly on
the device (throughput does not depend on what the weights are). For each shape, in order:

1. the bf16 matrix-multiply peak and the device-to-device copy bandwidth (the roofline);
2. greedy decoding with the decoder a study would use (fixed buffers and CUDA graphs on a GPU) at batch 1, 32 and
   300, with what the graph path did (captures, checked replays, failures and their causes), and transformers'
   `generate` at batch 32 beside it (tokens identical counted); first, so that it answers even if training fails;
3. one full fine-tuning step at the paper's batch (8 x 256): model FLOPs utilisation (MFU)
   against the measured peak and against the card's dense bf16 specification;
4. Late-Stage LoRA (r 32, last 5 blocks) at the same batch, through PEFT's full forward and
   through the trunk cache, with the first step's loss from each (they must agree);
5. peak device memory of each phase.

Then a one-line estimate of the paper's whole TinyLlama study on this GPU from the measured rates.
Every phase is written to the JSON file as soon as it ends, so a run stopped by its time limit
keeps what it measured; a phase that runs out of memory is recorded as such and the rest go on.

    python benchmarks/gpu_check.py --json $OUT/gpu_check.json        # on a GPU (a few minutes on an H100/H200)
    python benchmarks/gpu_check.py --tiny --json /tmp/gpu_check.json  # anywhere: tiny shapes on the CPU
                                                                      # (the test suite runs this, so it cannot rot)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, forward_flops_per_token  # noqa: E402  (also puts src/ on the path)

from hyperfitting.config import load_config  # noqa: E402
from hyperfitting.generation.decoding import Variant, decode_batch, decode_variants, decoder_for  # noqa: E402
from hyperfitting.generation.fixed import graph_stats, release_all_workspaces, reset_graph_stats  # noqa: E402
from hyperfitting.training.hyperfit import BlockLoss  # noqa: E402
from hyperfitting.training.methods import prepare_for_training  # noqa: E402
from hyperfitting.training.trunk_cache import TrunkCache  # noqa: E402

# Llama-architecture shapes (from each model's config.json); "tiny" keeps the same structure at toy size.
SHAPES = {
    "tinyllama-1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        rope_theta=10000.0,
        max_position_embeddings=2048,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        rope_theta=10000.0,
        max_position_embeddings=512,
    ),
}
# Dense bf16 tensor-core peak from NVIDIA's data sheets (SXM parts); the measured peak is the fairer roofline.
SPEC_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}


class Sizes:
    """How much work each phase does: the paper's batch on a GPU, toy sizes with --tiny."""

    def __init__(self, tiny: bool):
        self.batch, self.seq = (2, 32) if tiny else (8, 256)
        self.train_steps = 2 if tiny else 8
        self.lora_sequences = 8 if tiny else 128  # one timed epoch of this many sequences
        self.decode_batches = (1, 4) if tiny else (1, 32, 300)
        self.generate_batch = 4 if tiny else 32
        self.prompt_tokens, self.new_tokens = (8, 8) if tiny else (32, 256)
        self.matmul = 256 if tiny else 8192
        self.copy_bytes = 2**24 if tiny else 2**32


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def device_seconds(device: torch.device, function, repeats: int = 1) -> float:
    """Mean seconds per call of ``function`` over ``repeats`` calls, the device drained before and after."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def roofline(device: torch.device, sizes: Sizes, dtype: torch.dtype) -> dict:
    n = sizes.matmul
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = device_seconds(device, lambda: a @ b, repeats=10)
    source = torch.empty(sizes.copy_bytes // 2, dtype=torch.bfloat16, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    copy_seconds = device_seconds(device, lambda: target.copy_(source), repeats=10)
    a = b = source = target = None  # free the device memory now (a closure holds them: `del` would not)
    # bytes read + written
    return {
        "matmul_tflops": 2 * n**3 / seconds / 1e12,
        "copy_tb_per_s": 2 * sizes.copy_bytes / copy_seconds / 1e12,
    }


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    """A Llama model of ``shape`` with random weights, created on ``device`` (no host copy of an 8B model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)  # the same weights each time a shape is built: the two LoRA paths start alike
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def random_ids(rows: int, length: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(seed)).to(device)


def full_finetune(shape: str, device, sizes: Sizes, peak_tflops: float) -> dict:
    """One Adam step of every parameter at batch x seq, under bf16 autocast where the weights allow it."""
    # fp32 master weights need 16 bytes a parameter with Adam: 128 GB at 8B, beyond one card with
    # activations, so the 8B step keeps weights, gradients and Adam state in bf16 (stated in the output).
    master = torch.float32 if shape != "llama-3.1-8b" else torch.bfloat16
    model = build_model(shape, device, master)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    ids = random_ids(sizes.batch, sizes.seq, model.config.vocab_size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: kernels chosen, optimizer state allocated
        step()
    seconds = device_seconds(device, step, repeats=sizes.train_steps)
    tokens = sizes.batch * sizes.seq
    flops = 3 * forward_flops_per_token(model, context=sizes.seq) * tokens  # forward + backward (2x)
    parameters = sum(p.numel() for p in model.parameters())
    model = optimizer = None  # free the device memory now (a closure holds them: `del` would not)
    weights = "bf16 weights, gradients and Adam state" if master == torch.bfloat16 else "fp32 master weights"
    return {
        "weights": weights + (", bf16 autocast" if device.type == "cuda" else ""),
        "parameters": parameters,
        "step_s": seconds,
        "tokens_per_s": tokens / seconds,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu_vs_measured": flops / seconds / 1e12 / peak_tflops,
    }


def late_stage_lora(shape: str, device, sizes: Sizes) -> dict:
    """Late-Stage LoRA epochs through PEFT's full forward and through the trunk cache (bf16 frozen base)."""
    config = load_config(
        overrides=["train.method=lora", "train.blocks=last:5", "train.lora_rank=32", "train.lora_alpha=64"]
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ids = random_ids(sizes.lora_sequences, sizes.seq, SHAPES[shape]["vocab_size"], "cpu", seed=1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    result = {}
    for path in ("peft_full_forward", "trunk_cache"):
        reset_peak(device)
        model, plan = prepare_for_training(build_model(shape, device, dtype), config.train)
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        cache_seconds, cache = 0.0, None
        if path == "trunk_cache":
            started = time.perf_counter()
            cache = TrunkCache.build(model, plan.first_trainable_block, ids, sizes.batch, max_memory_gb=64.0)
            synchronize(device)
            cache_seconds = time.perf_counter() - started
        loss_fn = BlockLoss(model, cache)
        first_loss = []

        def epoch():
            for start in range(0, len(ids), sizes.batch):
                index = torch.arange(start, min(start + sizes.batch, len(ids)))
                with autocast:
                    loss = loss_fn(ids[index], cache[index] if cache is not None else None)
                if not first_loss:
                    first_loss.append(float(loss.detach()))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        epoch()  # warm-up epoch
        seconds = device_seconds(device, epoch)
        result[path] = {
            "epoch_s": seconds,
            "tokens_per_s": ids.numel() / seconds,
            "one_off_cache_s": cache_seconds,
            "first_step_loss": first_loss[0],
            "peak_gib": peak_gib(device),
        }
        model = optimizer = cache = loss_fn = None  # free the device memory now (a closure holds them: `del` would not)
    result["speedup_per_epoch"] = result["peft_full_forward"]["epoch_s"] / result["trunk_cache"]["epoch_s"]
    result["first_loss_difference"] = abs(
        result["peft_full_forward"]["first_step_loss"] - result["trunk_cache"]["first_step_loss"]
    )
    result["trainable_blocks"] = plan.blocks
    return result


def decoding(shape: str, device, sizes: Sizes, copy_tb_per_s: float) -> dict:
    """Greedy tokens/s of the toolkit's decoding path per batch width, and `generate` beside it at one width."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(shape, device, dtype).eval()
    vocab = model.config.vocab_size
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # the decoder a study would use here: fixed buffers with CUDA graphs on a GPU, the growing cache on a CPU
    decoder = decoder_for("auto", model, sizes.prompt_tokens + sizes.new_tokens)
    result = {"new_tokens": sizes.new_tokens, "prompt_tokens": sizes.prompt_tokens, "decoder": decoder}

    def decode(prompts):
        return decode_variants(model, prompts, [Variant()], sizes.new_tokens, 0, decoder=decoder)[0]

    for width in sizes.decode_batches:
        prompts = random_ids(width, sizes.prompt_tokens, vocab, "cpu", seed=2).tolist()
        reset_peak(device)
        reset_graph_stats()
        # The first pass at a width pays one-off costs per new shape (on a GPU, an attention plan per cache length,
        # and the graph's capture); it is timed on its own, and the steady rate comes from a second, identical pass,
        # which replays the graph the first one kept.
        outputs = []
        first_s = device_seconds(device, lambda: outputs.append(decode(prompts)))
        seconds = device_seconds(device, lambda: outputs.append(decode(prompts)))
        graphs = graph_stats()
        release_all_workspaces()
        # Weight-read bound: every step reads all weights once (the KV cache adds to it at wide batches), at the
        # memory's measured rate: a copy's bytes read and written together, as gpu_study.py counts it.
        bound_s = sizes.new_tokens * weight_bytes / (copy_tb_per_s * 1e12)
        result[f"batch_{width}"] = {
            "tokens_per_s": width * sizes.new_tokens / seconds,
            "seconds": seconds,
            "first_pass_s": first_s,
            "share_of_weight_read_bound": bound_s / seconds,
            "peak_gib": peak_gib(device),
            "graphs": graphs,
        }
        if width == sizes.generate_batch:
            ours = [c.token_ids for c in outputs[-1]]
            ids = torch.tensor(prompts, device=device)
            generated = []

            def run_generate():
                with torch.no_grad():
                    generated.append(
                        model.generate(
                            input_ids=ids,
                            attention_mask=torch.ones_like(ids),
                            max_new_tokens=sizes.new_tokens,
                            min_new_tokens=sizes.new_tokens,
                            do_sample=False,
                            pad_token_id=0,
                        )
                    )

            run_generate()  # same warm start as ours
            gen_seconds = device_seconds(device, run_generate)
            theirs = generated[-1][:, sizes.prompt_tokens :].tolist()
            result[f"generate_batch_{width}"] = {
                "tokens_per_s": width * sizes.new_tokens / gen_seconds,
                "ours_over_generate": gen_seconds / seconds,
                # Random weights make near-ties common, so bf16 paths part early; fp32 on the CPU agrees (tests).
                "identical_continuations": sum(a == b for a, b in zip(ours, theirs)),
                "of": width,
            }
    model = None  # free the device memory now (a closure holds them: `del` would not)
    return result


def profile_decoding(shape: str, device, sizes: Sizes) -> None:
    """Where a decoding step's time goes, ours against `generate` (batch 32, 32 new tokens): the top operators."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(shape, device, torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    prompts = random_ids(sizes.generate_batch, sizes.prompt_tokens, model.config.vocab_size, "cpu", seed=2).tolist()
    ragged = [p[1:] if i == 0 else p for i, p in enumerate(prompts)]  # one shorter prompt: the padded path
    ids = torch.tensor(prompts, device=device)
    runs = {
        "ours": lambda: decode_batch(model, prompts, 32, pad_token_id=0),
        "ours, padded path": lambda: decode_batch(model, ragged, 32, pad_token_id=0),
        "generate": lambda: model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        ),
    }
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, run in runs.items():
        with torch.no_grad():
            run()
            print(f"{name}: {device_seconds(device, run) / 32 * 1e3:.1f} ms per step", flush=True)
            with profile(activities=activities) as profiler:
                run()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)


def paper_study_estimate(shape_results: dict, sizes: Sizes) -> str:
    """The paper's TinyLlama study from measured rates: 20 epochs of 2000 x 256 full fine-tuning, then decoding."""
    train_tokens = 20 * 2000 * 256
    train_s = train_tokens / shape_results["full_finetune"]["tokens_per_s"]
    widest = max(sizes.decode_batches)
    decode_rate = shape_results["decoding"][f"batch_{widest}"]["tokens_per_s"]
    # 300 prompts x 3 corpora x 256 tokens for base and hyperfitted, plus ~10 analysis decodes of the 300 fiction
    # prompts (5 temperatures, 3 static-bias strengths, 2 rank transplants).
    decode_tokens = (2 * 3 + 10) * 300 * 256
    decode_s = decode_tokens / decode_rate
    return (
        f"paper's TinyLlama study on this GPU: about {(train_s + decode_s) / 60:.0f} min "
        f"(full fine-tuning {train_s / 60:.1f} min at {shape_results['full_finetune']['tokens_per_s']:,.0f} tokens/s, "
        f"decoding {decode_s / 60:.1f} min at {decode_rate:,.0f} tokens/s, batch {widest})"
    )


def describe_device(device: torch.device) -> dict:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return {
            "device": properties.name,
            "memory_gib": properties.total_memory / 2**30,
            "multiprocessors": properties.multi_processor_count,
        }
    return {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (what the test suite runs)")
    parser.add_argument("--shapes", default=None, help="comma-separated, of: " + ", ".join(SHAPES))
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here, phase by phase")
    parser.add_argument(
        "--profile-decoding",
        action="store_true",
        help="only profile a decoding step of the first shape, ours against `generate`",
    )
    parser.add_argument(
        "--phases",
        default="decoding,full_finetune,late_stage_lora",
        help="comma-separated phases to run (always in this order: decoding first)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="skip the phases still to come once this much time has passed"
    )
    args = parser.parse_args(argv)

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        parser.error("no GPU here: run with --tiny for the CPU smoke version")
    shapes = args.shapes.split(",") if args.shapes else (["tiny"] if args.tiny else ["tinyllama-1.1b", "llama-3.1-8b"])
    sizes = Sizes(args.tiny)
    torch.manual_seed(0)
    started = time.perf_counter()
    results: dict = {
        "machine": describe_device(device),
        "torch": torch.__version__,
        "batch": [sizes.batch, sizes.seq],
        "shapes": {},
        # what tools/benchmarks_md.py names beside the table
        "environment": {
            "command": "python " + " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "commit": commit(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        },
    }
    import transformers

    results["transformers"] = transformers.__version__

    def save():
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))

    if args.profile_decoding:
        profile_decoding(shapes[0], device, sizes)
        return results
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    results["roofline"] = roofline(device, sizes, compute)
    print(
        f"{results['machine']['device']}: matmul {results['roofline']['matmul_tflops']:.0f} TFLOP/s ({compute}), "
        f"copy {results['roofline']['copy_tb_per_s']:.2f} TB/s",
        flush=True,
    )
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in results["machine"]["device"]), None)
    save()

    phases = (
        ("decoding", lambda shape: decoding(shape, device, sizes, results["roofline"]["copy_tb_per_s"])),
        ("full_finetune", lambda shape: full_finetune(shape, device, sizes, results["roofline"]["matmul_tflops"])),
        ("late_stage_lora", lambda shape: late_stage_lora(shape, device, sizes)),
    )
    wanted = args.phases.split(",")
    for shape in shapes:
        shape_results = results["shapes"].setdefault(shape, {})
        for name, run in phases:
            if name not in wanted:
                continue
            if time.perf_counter() - started > args.budget_s:
                shape_results[name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
                continue
            reset_peak(device)
            phase_started = time.perf_counter()
            try:
                shape_results[name] = run(shape)
            except torch.OutOfMemoryError as error:
                shape_results[name] = {"out_of_memory": str(error).split("\n")[0][:300]}
            shape_results[name]["phase_s"] = time.perf_counter() - phase_started
            shape_results[name]["peak_gib"] = peak_gib(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if spec and "achieved_tflops" in shape_results[name]:
                shape_results[name]["mfu_vs_spec"] = shape_results[name]["achieved_tflops"] / spec
            print(
                f"[{time.perf_counter() - started:6.0f} s] {shape} {name}: {json.dumps(shape_results[name])}",
                flush=True,
            )
            save()
    tinyllama = results["shapes"].get("tinyllama-1.1b", {})
    if (
        "tokens_per_s" in tinyllama.get("full_finetune", {})
        and "decoding" in tinyllama
        and "batch_300" in tinyllama["decoding"]
    ):
        results["paper_study_estimate"] = paper_study_estimate(tinyllama, sizes)
        print(results["paper_study_estimate"])
    results["wall_s"] = time.perf_counter() - started
    save()
    return results


if __name__ == "__main__":
    main()
