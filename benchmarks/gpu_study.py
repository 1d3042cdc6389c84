"""The first run on a GPU, in the order that answers the open questions first: does decoding capture and replay CUDA
graphs correctly, how fast, how close to the bound; then training; then every stage of the study.

A model of TinyLlama-1.1B's shape (random weights) and a byte-level BPE tokenizer of its 32,000-entry
vocabulary, trained here on the embedded fiction corpus, are written to a local folder (no download);
a second, small random model of the same vocabulary is the judge. Then, in one process, the phases (``--phases``
picks some, ``--budget-s`` stops the one under way when the time is spent and skips the rest; the JSON is written
after each):

1. ``decoding``: greedy decoding as the GPU presets decode (bf16 autocast; float32 on a CPU) at the presets' widths
   (64 prompts, and 320 rows: five settings stacked), the fixed-buffer decoder against the growing cache. Per width:
   ms per step (the difference of two lengths' passes: no prefill in it), the first pass (which captures the graph)
   apart from a steady one (which replays it), the share of the weight-read bound, whether graphs were captured and
   used (and why not), the replays checked against eager steps (the decoder checks the captured step, the next and
   the last), host syncs per decode, peak memory, identical tokens between the two decoders.
2. ``greedy_equality``: the fixed decoder's greedy tokens against the growing cache's and transformers'
   ``generate``'s, in float32, at width 64: identical continuations counted, and where the others part.
3. ``training``: the study's data and training stages through the train command's path; MFU from its log.
4. ``study``: the whole study on that model with a small config (full fine-tuning for 2 epochs, all five analyses,
   one control, three baselines, the judge), every stage through the real path, reusing the training phase's stages.
   Every forward call of every causal LM is counted, by stage and by device type (on a GPU the host's count must be
   zero; a replayed CUDA graph of a decoding step is not a call, so the device's count is a lower bound); each stage's
   measured peak of device memory sits beside its estimate.
5. ``teacher_forcing``: tokens/s of the analyses' teacher-forced passes.
6. ``estimate``: the paper's whole TinyLlama study on this machine, from the rates above.

    python benchmarks/gpu_study.py --json $OUT/gpu_study.json --out /tmp/gpu-study --budget-s 420  # on a GPU
    python benchmarks/gpu_study.py --tiny --json /tmp/gpu_study.json   # anywhere: tiny shapes, the CPU as the device
                                                                       # (the test suite runs this)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

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


class StageNames:
    """While active, tells ``counter`` which stage is running: every stage goes through StageGraph.run, which announces
    it."""

    def __init__(self, counter: ForwardCounter):
        self.counter = counter

    def __enter__(self):
        from hyperfitting.pipeline import graph

        self.announce = announce = graph.StageGraph.announce
        counter = self.counter

        def announce_and_count(self, name, detail=""):
            counter.stage = name
            return announce(self, name, detail)

        graph.StageGraph.announce = announce_and_count
        return self

    def __exit__(self, *exc):
        from hyperfitting.pipeline import graph

        graph.StageGraph.announce = self.announce
        self.counter.stage = "outside a stage"


def study_config(model: Path, judge: Path, run_dir: Path, tiny: bool, device: torch.device):
    from hyperfitting.config import load_config

    # As the GPU presets run: bf16 autocast for training and decoding (what the analyses measure stays float32);
    # float32 on a CPU.
    precision = ["model.precision=bf16"] if device.type == "cuda" else ["model.precision=fp32"]
    return load_config(None, study_overrides(model, judge, run_dir, tiny) + precision)


def training_run_phase(config, counter: ForwardCounter) -> dict:
    """The study's data and training stages alone, through the train command's path (the study then reuses them)."""
    from hyperfitting.models.loading import tokenizer_for
    from hyperfitting.pipeline.graph import StageGraph, data_spec, training_spec
    from hyperfitting.pipeline.runner import Shared, run_graph
    from hyperfitting.precision import precision_for
    from hyperfitting.rundir import prepare_run_dir, read_jsonl

    run_dir = prepare_run_dir(config, "overwrite")
    graph = StageGraph(run_dir, [data_spec(config), training_spec("train", config)])
    started = time.perf_counter()
    with StageNames(counter):
        _, context = precision_for(config, say=lambda text: None)
        with context:
            run_graph(graph, Shared(graph, tokenizer=tokenizer_for(config.model)))
    return {"seconds": time.perf_counter() - started, "train_log": read_jsonl(run_dir / "train" / "train_log.jsonl")}


def run_study_phase(config, counter: ForwardCounter, device: torch.device) -> dict:
    from hyperfitting.layout import STAGE_DONE
    from hyperfitting.pipeline import graph
    from hyperfitting.pipeline.runner import run_study
    from hyperfitting.rundir import prepare_run_dir, read_json

    run_dir = Path(config.run_dir)
    started = time.perf_counter()
    with StageNames(counter):  # the data and training stages of the training phase are reused where it ran
        run_study(config, prepare_run_dir(config, "resume"))
    seconds = time.perf_counter() - started
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
        "claims": {str(c["number"]): c["verdict"] for c in metrics["claims"]},
    }


class HostSyncs:
    """Counts the times the host waits for the device while active.

    On a GPU, CUDA's own record of it: ``torch.cuda.set_sync_debug_mode("warn")`` warns at every synchronising call
    (a stream synchronise: a value read into Python, a copy to the host, a copy from pageable host memory, a shape that
    depends on values), and the warnings are counted. On a CPU nothing waits; what is counted there is what would on a
    GPU: a value read into Python or a shape that depends on values (seen by a dispatch mode), a copy to the host
    (``tolist``, ``numpy``, ``cpu``, seen by a function mode). Neither sees a replayed graph, which issues no
    operation of its own.
    """

    def __init__(self, device: torch.device):
        self.device, self.count = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            import warnings

            self._warnings = warnings.catch_warnings(record=True)
            self._seen = self._warnings.__enter__()
            warnings.simplefilter("always")
            self._before = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._copies, self._mode = _HostCopies(), _DeviceReads()
            self._copies.__enter__()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(self._before)
            self.count = sum("synchroniz" in str(w.message) for w in self._seen)
            self._warnings.__exit__(*exc)
        else:
            self._mode.__exit__(*exc)
            self._copies.__exit__(*exc)
            self.count = self._mode.count + self._copies.count


class _HostCopies(TorchFunctionMode):
    """Copies of a tensor to the host that no dispatched operation shows on a CPU (``tolist``, ``numpy``, ``cpu``)."""

    NAMES = {"tolist", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.NAMES:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _DeviceReads(TorchDispatchMode):
    """The operations that read a tensor's values on the host: into Python, or to size a result."""

    READS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "equal", "is_nonzero"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.READS or (
            name in ("index", "index_put_", "index_put")  # x[mask]: a shape that depends on the values
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        ):
            self.count += 1
        return func(*args, **(kwargs or {}))


def let_go(model) -> None:
    """Free what decoding kept for ``model``: the fixed buffers and graphs, the bf16 copy of its weights."""
    from hyperfitting import precision
    from hyperfitting.generation import fixed

    fixed.release_all_workspaces()
    precision._BF16_COPIES.pop(model, None)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def read_weight_bytes(model, dtype: str) -> int:
    """Bytes a decoding step reads of the weights: all of them but an untied input embedding, of which a step reads
    only its rows' entries."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    untied = output is not None and output.weight is not embedding
    size = 2 if dtype == "bf16" else None
    return sum(p.numel() * (size or p.element_size()) for p in model.parameters() if not (untied and p is embedding))


def decoding_phase(
    model,
    tokenizer,
    widths: tuple[int, ...],
    new_tokens: int,
    prompt_tokens: int,
    copy_tb_per_s: float,
    device: torch.device,
) -> dict:
    """Greedy decoding as the GPU presets decode (bf16 autocast on a GPU, float32 on a CPU), per width: the fixed-buffer
    decoder (CUDA graphs on a GPU) against the growing cache. The first pass (which captures) is timed apart from a
    steady one (which replays the kept graph), a step's time apart from the prefill; whether graphs were captured and
    used, and why not; the replays checked against eager steps; host syncs per decode; peak memory."""
    from hyperfitting.config import GenerateArgs
    from hyperfitting.generation import fixed
    from hyperfitting.generation.decoding import generate
    from hyperfitting.precision import compute_precision

    dtype = "bf16" if device.type == "cuda" else "fp32"
    weight_bytes = read_weight_bytes(model, dtype)
    result: dict = {
        "dtype": dtype,
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens,
        "weight_bytes": weight_bytes,
        # a step reads every weight once (the KV cache adds to it at wide batches), at the memory's measured rate
        "weight_read_bound_ms_per_step": 1e3 * weight_bytes / (copy_tb_per_s * 1e12) if copy_tb_per_s else None,
    }
    vocabulary = model.config.vocab_size
    with compute_precision(dtype, device):
        for width in widths:
            prompts = torch.randint(
                3, vocabulary, (width, prompt_tokens), generator=torch.Generator().manual_seed(width)
            ).tolist()
            row: dict = {}
            tokens = {}
            for decoder in ("dynamic", "fixed"):
                fixed.reset_graph_stats()
                outputs = []

                def once(steps=new_tokens):
                    args = GenerateArgs(max_new_tokens=steps, batch_size=width, decoder=decoder)
                    outputs.append(generate(model, tokenizer, prompts, args, show_progress=False, shard=False))

                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                # Each length's first pass captures (its own bucket); a second pass replays what the first kept. A
                # step's time is the difference of two lengths' steady passes, so the prefill drops out of it.
                first = device_seconds(device, once)
                steady = device_seconds(device, once)
                counting = HostSyncs(device)
                with counting:
                    once()
                half = max(1, new_tokens // 2)
                device_seconds(device, lambda: once(half))
                steady_half = device_seconds(device, lambda: once(half))
                step_ms = 1e3 * max(steady - steady_half, 0.0) / max(new_tokens - half, 1)
                bound = result["weight_read_bound_ms_per_step"]
                row[decoder] = {
                    "tokens_per_s": width * new_tokens / steady,
                    "ms_per_step": step_ms,
                    "prefill_s": max(steady - new_tokens * step_ms / 1e3, 0.0),
                    "first_pass_s": first,
                    "steady_pass_s": steady,
                    "share_of_weight_read_bound": bound / step_ms if bound and step_ms else None,
                    "host_syncs_per_decode": counting.count,
                    "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                }
                if decoder == "fixed":
                    stats = fixed.graph_stats()
                    row[decoder]["graphs"] = {
                        **stats,
                        "captured": stats["captures"] > 0,
                        "used": stats["replays"] > 0 and not stats["failures"],
                        "why_not": stats["why_not"]
                        or ([] if device.type == "cuda" else ["no CUDA device: eager steps"]),
                    }
                let_go(model)
                tokens[decoder] = [o.token_ids for o in outputs[0]]
            row["fixed_over_dynamic"] = row["fixed"]["tokens_per_s"] / row["dynamic"]["tokens_per_s"]
            row["identical_greedy_continuations"] = sum(a == b for a, b in zip(tokens["dynamic"], tokens["fixed"]))
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
        ours, growing = (
            [
                o.token_ids
                for o in generate(
                    model,
                    tokenizer,
                    prompts,
                    GenerateArgs(max_new_tokens=new_tokens, batch_size=width, decoder=decoder),
                    show_progress=False,
                    shard=False,
                )
            ]
            for decoder in ("fixed", "dynamic")
        )
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
    let_go(model)
    parted = [next(i for i, (a, b) in enumerate(zip(x, y)) if a != b) for x, y in zip(ours, theirs) if x != y]
    return {
        "decoder": "fixed",
        "study_decoder_here": decoder,
        "identical_to_growing_cache": sum(a == b for a, b in zip(ours, growing)),
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
    decode = results.get("decoding", {})[widest]["fixed"]["tokens_per_s"] if widest else None
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


class BudgetSpent(BaseException):
    """Raised in the phase under way when the time budget runs out. A BaseException, as KeyboardInterrupt is: no
    ``except Exception`` on the way (the decoder's fallback from a failed capture) may take it for a failure."""


class Budget:
    """``--budget-s``: the time left, and a timer that interrupts a phase when it runs out (SIGALRM, main thread)."""

    def __init__(self, seconds: float | None, started: float):
        self.seconds, self.started = seconds, started

    def spent(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.started >= self.seconds

    @contextlib.contextmanager
    def phase(self):
        """Within: BudgetSpent is raised where the phase is when the time runs out (never outside a phase)."""
        if self.seconds is None:
            yield
            return

        def ring(signum, frame):
            raise BudgetSpent()

        previous = signal.signal(signal.SIGALRM, ring)
        # It rings again every 5 s until the phase is left: a ring that lands where Python cannot raise (a weakref
        # callback, a destructor) is not the last one.
        signal.setitimer(signal.ITIMER_REAL, max(self.seconds - (time.perf_counter() - self.started), 1e-3), 5.0)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


PHASES = ("decoding", "greedy_equality", "training", "study", "teacher_forcing", "estimate")


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
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, run in this order: {', '.join(PHASES)}"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="once this many seconds have passed, stop the phase under way and skip those still to come (each is "
        "recorded as stopped or skipped, and the JSON written)",
    )
    args = parser.parse_args(argv)
    wanted = [p for p in args.phases.split(",") if p]
    unknown = sorted(set(wanted) - set(PHASES))
    if unknown:
        parser.error(f"unknown phase {', '.join(unknown)}: choose from {', '.join(PHASES)}")

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
        "phases_asked": wanted,
        "skipped": {},
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

    from hyperfitting.config import ModelArgs
    from hyperfitting.models.loading import load_model

    model, tokenizer = load_model(ModelArgs(name=str(model_folder)))
    new_tokens, prompt_tokens = (8, 8) if args.tiny else (128, 32)
    config = study_config(model_folder, judge_folder, out / "run", args.tiny, device)
    counter = ForwardCounter()
    # Decoding first: the graph path is what has never run, and it must answer even if a later phase fails.
    work = {
        # 64 prompts (the presets' generate.batch_size) alone, and as five stacked settings (an analysis' sweep)
        "decoding": lambda: decoding_phase(
            model, tokenizer, (64, 320), new_tokens, prompt_tokens, results["roofline"]["copy_tb_per_s"], device
        ),
        "greedy_equality": lambda: greedy_equality_phase(model, tokenizer, 64, new_tokens, prompt_tokens, device),
        "training": lambda: training_run_phase(config, counter),
        "study": lambda: run_study_phase(config, counter, device),
        "teacher_forcing": lambda: teacher_forcing_phase(
            model, 16 if args.tiny else 64, 40 if args.tiny else 256, device
        ),
        "estimate": lambda: paper_estimate(results),
    }
    budget = Budget(args.budget_s, started)
    try:
        for phase in PHASES:
            if phase not in wanted:
                continue
            if budget.spent():
                results["skipped"][phase] = f"the time budget of {args.budget_s:.0f} s was spent"
                save(f"{phase} skipped:")
                continue
            try:
                # teacher forcing measures as the analyses do: float32, whatever autocast is about
                off = torch.autocast(device.type, dtype=torch.bfloat16, enabled=False)
                with budget.phase(), off if phase == "teacher_forcing" else contextlib.nullcontext():
                    results[phase] = work[phase]()
            except BudgetSpent:
                results["skipped"][phase] = f"stopped: the time budget of {args.budget_s:.0f} s ran out in it"
                save(f"{phase} stopped:")
                continue
            except Exception as error:
                if not budget.spent():
                    raise
                # the budget rang inside a C call, which turned it into an error of its own
                results["skipped"][phase] = (
                    f"stopped: the time budget of {args.budget_s:.0f} s ran out in it ({type(error).__name__})"
                )
                save(f"{phase} stopped:")
                continue
            if phase == "training":  # MFU of the real training path, from its own log
                results[phase].update(
                    training_phase(
                        results[phase].pop("train_log"),
                        model,
                        32 if args.tiny else 256,
                        results["roofline"]["matmul_tflops"],
                        spec,
                    )
                )
            save(phase)
    finally:
        counter.close()
    summarise(results)
    return results


def summarise(results: dict) -> None:
    for width in (64, 320):
        row = results.get("decoding", {}).get(f"width_{width}")
        if row:
            graphs = row["fixed"]["graphs"]
            share = row["fixed"]["share_of_weight_read_bound"]
            print(
                f"width {width} ({results['decoding']['dtype']}): fixed {row['fixed']['ms_per_step']:.2f} ms/step "
                f"({share or 0:.0%} of the weight-read bound), growing cache {row['dynamic']['ms_per_step']:.2f}; "
                f"graphs captured {graphs['captured']}, used {graphs['used']}"
                + (f" ({'; '.join(graphs['why_not'])})" if graphs["why_not"] else "")
                + f"; same tokens {row['identical_greedy_continuations']}/{width}"
            )
    study = results.get("study")
    if study:
        print(
            f"stages {len(study['stages']) - len(study['unfinished_stages'])}/{len(study['stages'])} finished; "
            f"causal-LM forwards on the host: {study['host_forwards']}, on the device: {study['device_forwards']}"
        )
    estimate = results.get("estimate", {})
    if "total_min" in estimate:
        print(
            f"paper's TinyLlama study here: about {estimate['total_min']:.0f} min (training "
            f"{estimate['training_min']:.1f}, decoding {estimate['decoding_min']:.1f}, teacher forcing "
            f"{estimate['teacher_forcing_min']:.1f})"
        )


if __name__ == "__main__":
    main()
