"""Export a hyperfitted model to what people run locally: a plain transformers folder, or a GGUF file.

- ``--merged DIR``: the adapter folded into the weights (PEFT's ``merge_and_unload``), saved with its
  tokenizer and model card; loads with ``AutoModelForCausalLM.from_pretrained(DIR)``, no PEFT needed.
- ``--gguf FILE``: written with ``gguf``, the GGUF library maintained by the llama.cpp project. The
  embedded models came from GGUF files, so the export keeps the source file's metadata (architecture,
  tokenizer, chat template) and replaces its tensors with the hyperfitted weights (float32 or float16,
  unquantised), under the names and layouts llama.cpp uses. A model that did not come from a GGUF
  file (a hub folder) is refused: convert its --merged folder with llama.cpp's own converter.

Both are verified by loading the export back and decoding the run's prompts greedily: the tokens must
equal the run's own hyperfitted generations (exact for float32; counted for float16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hyperfitting.errors import HyperfitError

# GGUF's own dtype codes for general.file_type (llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16).
FILE_TYPES = {"float32": 0, "float16": 1}


def export_merged(model, tokenizer, folder: Path) -> Path:
    """Save a merged (plain transformers) model and its tokenizer; refuses a folder that is not empty."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise HyperfitError(f"{folder} is not empty: choose a new folder for the export (nothing was written).")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for the query and key projections (rotary halves interleaved); transformers undoes it on
    load."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def export_gguf(model, source_gguf: Path, path: Path, dtype: str = "float32") -> Path:
    """Write ``model``'s weights into a copy of ``source_gguf`` (its metadata kept, its tensors replaced)."""
    import gguf

    path = Path(path)
    if path.exists():
        raise HyperfitError(f"{path} exists: choose a new file name for the export (nothing was written).")
    if dtype not in FILE_TYPES:
        raise HyperfitError(f"GGUF export dtype {dtype!r}: use float32 (exact) or float16.")
    reader = gguf.GGUFReader(str(source_gguf))
    architecture = reader.fields["general.architecture"].contents()
    if architecture != "llama":
        raise HyperfitError(
            f"GGUF export writes the llama architecture (SmolLM2 and other Llama-family models); this model's "
            f"GGUF says {architecture!r}. Export --merged and convert that folder with llama.cpp's converter."
        )
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    expected = {tensor.name for tensor in reader.tensors}
    writer = gguf.GGUFWriter(str(path), architecture)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in (
            "general.architecture",
            "general.file_type",
            "general.quantization_version",
        ):
            continue  # the writer adds its own header and architecture; the file type is ours now
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(FILE_TYPES[dtype])
    written = set()
    for hf_name, tensor in model.state_dict().items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise HyperfitError(
                f"No GGUF name for tensor {hf_name}: this model's layout is not the llama architecture's."
            )
        if name == "output.weight" and "output.weight" not in expected:
            continue  # a tied head: llama.cpp reads the embedding matrix
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            array = _permute_for_rope(array, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            array = _permute_for_rope(array, config.num_key_value_heads)
        # Norm vectors stay float32, as llama.cpp's own converter keeps them.
        writer.add_tensor(name, array if array.ndim == 1 or dtype == "float32" else array.astype(np.float16))
        written.add(name)
    missing = expected - written
    if missing:
        raise HyperfitError(f"The export lacks tensors the source GGUF has: {sorted(missing)[:3]} ...")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def greedy_agreement(tokens: list[list[int]], reference: list[list[int]]) -> dict:
    """How far two sets of greedy continuations agree: identical rows, and the share of steps before the first
    difference."""
    identical = sum(a == b for a, b in zip(tokens, reference))
    agreeing_steps = 0
    for a, b in zip(tokens, reference):
        for x, y in zip(a, b):
            if x != y:
                break
            agreeing_steps += 1
    total = sum(len(b) for b in reference)
    return {
        "rows": len(reference),
        "identical_rows": identical,
        "steps_before_first_difference": agreeing_steps / total if total else 1.0,
    }


def source_gguf(model_name: str) -> Path:
    """The GGUF file a model came from: an embedded model's, or a .gguf model.name; otherwise a clear refusal."""
    from hyperfitting.models.loading import EMBEDDED_MODELS, embedded_model_path

    if model_name in EMBEDDED_MODELS:
        return embedded_model_path(model_name)
    if str(model_name).endswith(".gguf") and Path(model_name).is_file():
        return Path(model_name)
    raise HyperfitError(
        f"--gguf keeps the metadata of the GGUF file the model came from, and '{model_name}' did not come from one. "
        "Export --merged DIR and convert DIR with llama.cpp's convert_hf_to_gguf.py."
    )


def export_run(
    run_dir: Path, merged: Path | None = None, gguf_path: Path | None = None, gguf_dtype: str = "float32"
) -> dict:
    """Export a finished run's hyperfitted model and verify each export by decoding the run's prompts again."""
    import yaml

    from hyperfitting.config import GenerateArgs, ModelArgs
    from hyperfitting.generation.decoding import generate
    from hyperfitting.models.loading import load_hyperfitted, load_model
    from hyperfitting.rundir import STAGE_DONE, read_jsonl, write_json

    run_dir = Path(run_dir)
    if not (run_dir / "train" / STAGE_DONE).exists():
        raise HyperfitError(f"'{run_dir}' has no finished training stage: run hyperfit train (or study) first.")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    model_args = ModelArgs(**{k: v for k, v in config["model"].items() if k != "adapter"})
    if gguf_path is not None:
        source = source_gguf(model_args.name)  # refuse before any work
        if Path(gguf_path).exists():
            raise HyperfitError(f"{gguf_path} exists: choose a new file name for the export (nothing was written).")
    model, tokenizer = load_hyperfitted(model_args, run_dir / "train")  # an adapter is merged into the weights here
    # The reference: the run's own hyperfitted generations when they were decoded greedily, else the merged model in
    # memory.
    generate_args = GenerateArgs(**{k: v for k, v in config["generate"].items()})
    rows = (
        read_jsonl(run_dir / "hyperfitted" / "generations.jsonl")
        if (run_dir / "hyperfitted" / "generations.jsonl").exists()
        else []
    )
    plain = not (generate_args.do_sample or generate_args.citation_blocker or generate_args.contrastive_top_k)
    greedy = GenerateArgs(
        max_new_tokens=generate_args.max_new_tokens,
        batch_size=generate_args.batch_size,
        stop_at_eos=generate_args.stop_at_eos,
    )
    if rows and plain:
        prompts, reference, against = (
            [r["prompt_ids"] for r in rows],
            [r["continuation_ids"] for r in rows],
            "the run's generations",
        )
    else:
        prompts = [r["prompt_ids"] for r in rows] or [tokenizer("Once upon a time")["input_ids"]]
        reference = [c.token_ids for c in generate(model, tokenizer, prompts, greedy, show_progress=False)]
        against = "the merged model's greedy decoding in memory"
    report: dict = {}
    if merged is not None:
        from hyperfitting.report.model_card import write_model_card
        from hyperfitting.rundir import read_json

        folder = export_merged(model, tokenizer, Path(merged))
        write_model_card(
            folder,
            config,
            read_json(run_dir / "train" / "summary.json"),
            read_json(run_dir / "data" / "manifest.json") if (run_dir / "data" / "manifest.json").exists() else {},
        )
        back, back_tokenizer = load_model(ModelArgs(name=str(folder)))
        got = [c.token_ids for c in generate(back, back_tokenizer, prompts, greedy, desc="checking the merged export")]
        report["merged"] = {"path": str(folder), "against": against, **greedy_agreement(got, reference)}
        del back
    if gguf_path is not None:
        path = export_gguf(model, source, Path(gguf_path), gguf_dtype)
        back, back_tokenizer = load_model(ModelArgs(name=str(path)))
        got = [c.token_ids for c in generate(back, back_tokenizer, prompts, greedy, desc="checking the GGUF export")]
        report["gguf"] = {
            "path": str(path),
            "dtype": gguf_dtype,
            "bytes": path.stat().st_size,
            "source": str(source),
            "against": against,
            **greedy_agreement(got, reference),
        }
    write_json(run_dir / "exports.json", report)
    return report
