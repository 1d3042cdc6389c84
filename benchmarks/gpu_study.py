"""The whole study on a GPU, end to end, instrumented: does every stage run on the device, and how fast?

A model of TinyLlama-1.1B's shape (random weights) and a byte-level BPE tokenizer of its 32,000-entry
vocabulary, trained here on the embedded fiction corpus, are written to a local folder (no download);
a second, small random model of the same vocabulary is the judge. Then, in one process:

1. ``study``: the whole study on that model with a small config (full fine-tuning for 2 epochs, all
   five analyses, one control, three baselines, the judge), every stage through the real CLI path.
   Every forward call of every causal LM is counted, by stage and by device type (on a GPU the host's
   count must be zero; a replayed CUDA graph of a decoding step is not a call, so the device's count is a
   lower bound); each stage's measured peak of device memory sits beside its estimate.
2. ``decoding``: greedy decoding at widths 64 and 300 in float32 (as the GPU presets decode), the fixed-buffer
   decoder (CUDA graphs on a GPU) against the growing cache, first pass apart: tokens/s, ms per step, share
   of the weight-read bound.
3. ``greedy_equality``: the toolkit's greedy tokens against transformers' ``generate`` in float32, at
   width 64: identical continuations counted, and where the others part.
4. ``training``: MFU of the real training path, from the study's own training log.
5. ``teacher_forcing``: tokens/s of the analyses' teacher-forced passes.
6. ``estimate``: the paper's whole TinyLlama study on this machine, from the rates above.

Every phase is written to the JSON file as it ends.

python benchmarks/gpu_study.py --json $OUT/gpu_study.json --out /tmp/gpu-study   # on a GPU (goal: < 8 minutes on an
H200) python benchmarks/gpu_study.py --tiny --json /tmp/gpu_study.json                 # anywhere: tiny shapes, CPU as
the device # (the test suite runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import forward_flops_per_token  # noqa: E402  (also puts src/ on the path)
from gpu_check import SHAPES, SPEC_BF16_TFLOPS, Sizes, describe_device, device_seconds, roofline  # noqa: E402

JUDGE_SHAPE = dict(
    hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
)
TINY_JUDGE_SHAPE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)

# The paper's TinyLlama study in work units (configs/tinyllama-1.1b-gpu.yaml): 20 epochs over 2000 blocks of 256
# tokens, and the decoded and teacher-forced row-tokens of its stages (generation table, baselines, analyses with
# 5 seeds, controls, judge), counted from that preset.
PAPER = {"train_tokens": 20 * 2000 * 256, "decoded_row_tokens": 4.9e6, "teacher_forced_tokens": 6.0e6}


def write_model_folders(folder: Path, tiny: bool) -> tuple[Path, Path]:
    """(the studied model's folder, the judge's): random Llama weights and one tokenizer trained on the fiction
    corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from hyperfitting.data.corpora import load_corpus

    shape = dict(SHAPES["tiny" if tiny else "tinyllama-1.1b"])
    vocabulary = shape["vocab_size"]
    texts = [document.text for document in load_corpus("fiction", max_documents=4 if tiny else None)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    if len(tokenizer) < vocabulary:  # a corpus too small for every merge: the rest of the vocabulary is unused entries
        tokenizer.add_tokens([f"<unused{i}>" for i in range(vocabulary - len(tokenizer))])
    folders = []
    for name, layout in (("model", shape), ("judge", {**shape, **(TINY_JUDGE_SHAPE if tiny else JUDGE_SHAPE)})):
        target = folder / name
        config = LlamaConfig(**layout, tie_word_embeddings=False, pad_token_id=0, bos_token_id=0, eos_token_id=0)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(target)
        tokenizer.save_pretrained(target)
        folders.append(target)
    return folders[0], folders[1]


def study_overrides(model: Path, judge: Path, run_dir: Path, tiny: bool) -> list[str]:
    """A small study that still runs every stage kind: full fine-tuning, all five analyses, one control, baselines, the
    judge."""
    sizes = (
        dict(
            train=8,
            block=32,
            heldout=4,
            prompts=4,
            prompt=8,
            reference=12,
            new=8,
            analysis_new=6,
            positions=64,
            batch=4,
        )
        if tiny
        else dict(
            train=64,
            block=256,
            heldout=16,
            prompts=64,
            prompt=32,
            reference=128,
            new=128,
            analysis_new=96,
            positions=1024,
            batch=8,
        )
    )
    return [
        f"model.name={model}",
        f"run_dir={run_dir}",
        "data.corpus=fiction",
        "data.eval_corpora=[fiction]",
        f"data.train_blocks={sizes['train']}",
        f"data.block_tokens={sizes['block']}",
        f"data.heldout_blocks={sizes['heldout']}",
        f"data.eval_prompts={sizes['prompts']}",
        f"data.prompt_tokens={sizes['prompt']}",
        f"data.reference_tokens={sizes['reference']}",
        "train.method=full",
        "train.epochs=2",
        f"train.batch_size={sizes['batch']}",
        "train.lr=1e-5",
        "train.diversity_every=1",
        "train.diversity_prompts=4",
        f"train.diversity_tokens={sizes['new']}",
        f"generate.max_new_tokens={sizes['new']}",
        "generate.batch_size=64",
        "analysis.seeds=1",
        f"analysis.max_new_tokens={sizes['analysis_new']}",
        "analysis.temperature_grid=[0.5,1.0]",
        "analysis.static_bias_alphas=[0.5]",
        f"analysis.max_positions={sizes['positions']}",
        f"analysis.geometry_tokens={sizes['positions']}",
        "study.analyses=[temperature,static-bias,ranks,geometry,block-swap]",
        "study.controls=[lora:last:5]",
        "study.controls_train_blocks=4",
        "study.controls_epochs=2",
        "study.controls_lr_sweep=[]",
        "study.lowest_heldout_control=false",
        "study.mauve=false",
        "study.retention=false",
        "study.reader_prompts=2",
        f"study.judge={judge}",
        "baselines.methods=[greedy,top-p,repetition-penalty]",
        "baselines.seeds=1",
    ]


class ForwardCounter:
    """Counts every forward pass of a causal LM (a transformers ``*ForCausalLM``), by the running stage and its device
    type."""

    def __init__(self):
        from transformers import PreTrainedModel

        self.counts: Counter = Counter()
        self.stage = "outside a stage"
        self.model_class = PreTrainedModel
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._count)

    def _count(self, module, args):
        # transformers' causal LMs only: a PEFT wrapper around one is not counted a second time.
        if isinstance(module, self.model_class) and type(module).__name__.endswith("ForCausalLM"):
            parameter = next(module.parameters(), None)
            self.counts[(self.stage, parameter.device.type if parameter is not None else "none")] += 1

    def by_stage(self) -> dict:
        table: dict = {}
        for (stage, device), count in self.counts.items():
            table.setdefault(stage, {})[device] = count
        return table

    def close(self):
        self.handle.remove()


def run_study_phase(
    model: Path, judge: Path, run_dir: Path, tiny: bool, counter: ForwardCounter, device: torch.device
) -> dict:
    from hyperfitting.config import load_config
    from hyperfitting.layout import STAGE_DONE
    from hyperfitting.pipeline import graph
    from hyperfitting.pipeline.runner import run_study
    from hyperfitting.rundir import prepare_run_dir, read_json

    announce = graph.StageGraph.announce

    def announce_and_count(self, name, detail=""):  # every stage goes through StageGraph.run, which announces it
        counter.stage = name
        return announce(self, name, detail)

    graph.StageGraph.announce = announce_and_count
    try:
        # As the GPU presets run: bf16 autocast for the training steps, float32 for decoding (model.precision's
        # default).
        precision = ["train.mixed_precision=bf16"] if device.type == "cuda" else ["model.precision=fp32"]
        config = load_config(None, study_overrides(model, judge, run_dir, tiny) + precision)
        started = time.perf_counter()
        run_study(config, prepare_run_dir(config, "overwrite"))
        seconds = time.perf_counter() - started
    finally:
        graph.StageGraph.announce = announce
        counter.stage = "after the study"
    planned = list(graph.study_graph(config, run_dir).specs)
    metrics = read_json(run_dir / "metrics.json")
    forwards = counter.by_stage()
    host = sum(devices.get("cpu", 0) for devices in forwards.values()) if device.type != "cpu" else 0
    return {
        "seconds": seconds,
        "stages": planned,
        "unfinished_stages": [s for s in planned if not (run_dir / s / STAGE_DONE).exists()],
        "forwards_by_stage": forwards,
        "host_forwards": host,
        "device_forwards": sum(sum(d.values()) for d in forwards.values()) - host,
        "stage_profile": metrics["stage_profile"],
        "precision": metrics.get("precision"),
        "train_log": metrics["train_log"],
        "claims": {str(c["number"]): c["verdict"] for c in metrics["claims"]},
    }


def decoding_phase(
    model,
    tokenizer,
    widths: tuple[int, ...],
    new_tokens: int,
    prompt_tokens: int,
    copy_tb_per_s: float,
    device: torch.device,
) -> dict:
    """Greedy tokens/s per width, the fixed-buffer decoder against the growing cache, first pass timed apart."""
    from hyperfitting.config import GenerateArgs
    from hyperfitting.generation.decoding import generate

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    result: dict = {"new_tokens": new_tokens, "prompt_tokens": prompt_tokens, "weight_bytes": weight_bytes}
    vocabulary = model.config.vocab_size
    for width in widths:
        prompts = torch.randint(
            3, vocabulary, (width, prompt_tokens), generator=torch.Generator().manual_seed(width)
        ).tolist()
        row = {}
        for decoder in ("dynamic", "fixed"):
            args = GenerateArgs(max_new_tokens=new_tokens, batch_size=width, decoder=decoder)
            outputs = []

            def once():
                outputs.append(generate(model, tokenizer, prompts, args, show_progress=False, shard=False))

            first = device_seconds(device, once)
            steady = device_seconds(device, once)
            # Weight-read bound: a step reads every weight once (at batch 300 the KV cache adds to it), at the memory's
            # measured rate (a copy's reads and writes together: gpu_check.py halved it, which doubled its shares).
            bound = new_tokens * weight_bytes / (copy_tb_per_s * 1e12) if copy_tb_per_s else None
            row[decoder] = {
                "tokens_per_s": width * new_tokens / steady,
                "ms_per_step": 1e3 * steady / new_tokens,
                "first_pass_s": first,
                "steady_pass_s": steady,
                "share_of_weight_read_bound": bound / steady if bound else None,
            }
            row[f"{decoder}_tokens"] = [o.token_ids for o in outputs[-1]]
        row["fixed_over_dynamic"] = row["fixed"]["tokens_per_s"] / row["dynamic"]["tokens_per_s"]
        row["identical_greedy_continuations"] = sum(
            a == b for a, b in zip(row.pop("dynamic_tokens"), row.pop("fixed_tokens"))
        )
        result[f"width_{width}"] = row
    return result


def greedy_equality_phase(
    model, tokenizer, width: int, new_tokens: int, prompt_tokens: int, device: torch.device
) -> dict:
    """The toolkit's greedy tokens (the decoder a study would use here) against `generate`'s, both in float32."""
    from hyperfitting.config import GenerateArgs
    from hyperfitting.generation.decoding import decoder_for, generate
    from hyperfitting.precision import full_precision

    prompts = torch.randint(
        3, model.config.vocab_size, (width, prompt_tokens), generator=torch.Generator().manual_seed(7)
    ).tolist()
    decoder = decoder_for("auto", model, prompt_tokens + new_tokens)
    with full_precision(device):
        ours = [
            o.token_ids
            for o in generate(
                model,
                tokenizer,
                prompts,
                GenerateArgs(max_new_tokens=new_tokens, batch_size=width, decoder="fixed"),
                show_progress=False,
                shard=False,
            )
        ]
        ids = torch.tensor(prompts, device=device)
        with torch.no_grad():
            theirs = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )[:, prompt_tokens:].tolist()
    parted = [next(i for i, (a, b) in enumerate(zip(x, y)) if a != b) for x, y in zip(ours, theirs) if x != y]
    return {
        "decoder": "fixed",
        "study_decoder_here": decoder,
        "identical_continuations": sum(a == b for a, b in zip(ours, theirs)),
        "of": width,
        "first_differing_step": parted,
        "why_they_may_differ": "random weights leave near-ties between the top two tokens; a last-bit difference in a "
        "wider "
        "attention (the fixed buffers attend over the whole buffer, masked) can flip one, and the "
        "paths part from there",
    }


def training_phase(
    train_log: list[dict], model, block_tokens: int, peak_tflops: float, spec_tflops: float | None
) -> dict:
    """MFU of the study's own training epochs (held-out and diversity evaluations are outside the epoch's time)."""
    rates = [row["tokens_per_second"] for row in train_log if row.get("tokens_per_second")]
    if not rates:
        return {"unavailable": "no timed training epoch in the log"}
    rate = max(rates)
    flops = 3 * forward_flops_per_token(model, context=block_tokens) * rate
    return {
        "tokens_per_s": rate,
        "achieved_tflops": flops / 1e12,
        "mfu_vs_measured": flops / 1e12 / peak_tflops,
        "mfu_vs_spec": flops / 1e12 / spec_tflops if spec_tflops else None,
    }


def teacher_forcing_phase(model, rows: int, length: int, device: torch.device) -> dict:
    from hyperfitting.analysis.teacher_forcing import teacher_forced_logits

    sequences = torch.randint(
        3, model.config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(3)
    ).tolist()
    starts = [length // 4] * rows

    def once():
        for _ in teacher_forced_logits(model, sequences, starts, reduce=lambda i, logits: logits.argmax(-1)):
            pass

    once()
    seconds = device_seconds(device, once)
    return {"tokens_per_s": rows * length / seconds, "rows": rows, "length": length}


def paper_estimate(results: dict) -> dict:
    train = results.get("training", {}).get("tokens_per_s")
    widest = max(
        (k for k in results.get("decoding", {}) if k.startswith("width_")),
        key=lambda k: int(k.split("_")[1]),
        default=None,
    )
    decode = results["decoding"][widest]["fixed"]["tokens_per_s"] if widest else None
    forced = results.get("teacher_forcing", {}).get("tokens_per_s")
    if not (train and decode and forced):
        return {"unavailable": "a rate is missing"}
    parts = {
        "training_min": PAPER["train_tokens"] / train / 60,
        "decoding_min": PAPER["decoded_row_tokens"] / decode / 60,
        "teacher_forcing_min": PAPER["teacher_forced_tokens"] / forced / 60,
    }
    return {
        **parts,
        "total_min": sum(parts.values()),
        "goal_min": 15,
        "from_rates": {"train": train, "decode": decode, "teacher_forcing": forced},
        "work": PAPER,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny shapes, the CPU as the device (what the test suite runs)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here, phase by phase")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the model, its judge and the study's run (default: a temporary one)",
    )
    args = parser.parse_args(argv)

    # The device every model of the study goes to (models/loading.py: place_on_device): a GPU wherever there is one,
    # --tiny included (it only shrinks the shapes), so the forwards, the timings and the tensors all meet there.
    from hyperfitting.distributed import process_state

    device = process_state().device
    if device.type == "cpu" and not args.tiny:
        parser.error("no GPU here: run with --tiny for the CPU version")
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-study-"))
    started = time.perf_counter()
    results: dict = {
        "machine": describe_device(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "tiny": args.tiny,
    }

    def save(phase: str):
        print(f"[{time.perf_counter() - started:6.0f} s] {phase} done", flush=True)
        results["wall_s"] = time.perf_counter() - started
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))

    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    results["roofline"] = roofline(device, Sizes(args.tiny), compute)
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in results["machine"]["device"]), None)
    model_folder, judge_folder = write_model_folders(out, args.tiny)
    save("model folders")

    counter = ForwardCounter()
    try:
        results["study"] = run_study_phase(model_folder, judge_folder, out / "run", args.tiny, counter, device)
    finally:
        counter.close()
    save("study")

    from hyperfitting.config import ModelArgs
    from hyperfitting.models.loading import load_model

    model, tokenizer = load_model(ModelArgs(name=str(model_folder)))
    new_tokens, prompt_tokens = (8, 8) if args.tiny else (128, 32)
    # In float32, as the GPU presets decode (model.precision=fp32): the rate the paper-study estimate needs.
    results["decoding"] = decoding_phase(
        model, tokenizer, (64, 300), new_tokens, prompt_tokens, results["roofline"]["copy_tb_per_s"], device
    )
    save("decoding")
    results["greedy_equality"] = greedy_equality_phase(model, tokenizer, 64, new_tokens, prompt_tokens, device)
    save("greedy equality")
    block_tokens = 32 if args.tiny else 256
    results["training"] = training_phase(
        results["study"]["train_log"], model, block_tokens, results["roofline"]["matmul_tflops"], spec
    )
    save("training")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=False):
        results["teacher_forcing"] = teacher_forcing_phase(
            model, 16 if args.tiny else 64, 40 if args.tiny else 256, device
        )
    save("teacher forcing")
    results["paper_study_estimate"] = paper_estimate(results)
    save("estimate")
    study = results["study"]
    print(
        f"stages {len(study['stages']) - len(study['unfinished_stages'])}/{len(study['stages'])} finished; causal-LM "
        "forwards on the host: "
        f"{study['host_forwards']}, on the device: {study['device_forwards']}"
    )
    for width in (64, 300):
        row = results["decoding"][f"width_{width}"]
        print(
            f"width {width}: fixed {row['fixed']['tokens_per_s']:,.0f} tokens/s ({row['fixed']['ms_per_step']:.1f} "
            "ms/step), "
            f"growing cache {row['dynamic']['tokens_per_s']:,.0f}: x{row['fixed_over_dynamic']:.2f}"
        )
    estimate = results["paper_study_estimate"]
    if "total_min" in estimate:
        print(
            f"paper's TinyLlama study here: about {estimate['total_min']:.0f} min (training "
            f"{estimate['training_min']:.1f}, "
            f"decoding {estimate['decoding_min']:.1f}, teacher forcing {estimate['teacher_forcing_min']:.1f})"
        )
    return results


if __name__ == "__main__":
    main()
