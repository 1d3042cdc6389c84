"""The toolkit as a library: hyperfit a model, decode, measure, and run one analysis, with no run folder.

    python examples/notebook_walkthrough.py                    # the embedded SmolLM2-135M (a few minutes on a CPU)
    python examples/notebook_walkthrough.py model.name=PATH    # any local Hugging Face model folder

Every step is one public function of `hyperfitting`; the test suite runs this file on a tiny model.
"""

from __future__ import annotations

import sys

import hyperfitting as hf


def main(overrides: list[str]) -> dict:
    config = hf.load_config(
        overrides=[
            "data.train_blocks=16",
            "data.eval_prompts=4",
            "data.eval_corpora=[fiction]",
            "train.epochs=3",
            "train.diversity_every=0",
            "generate.max_new_tokens=32",
            *overrides,
        ]
    )
    base, tokenizer = hf.load_model(config.model)
    data = hf.prepare_data(config.data, tokenizer)
    prompts = [p.prompt_ids for p in data.prompts[config.data.eval_corpora[0]]]

    # No folder given: checkpoints live in a temporary folder for the length of the call (pass one to resume).
    trained = hf.hyperfit(
        hf.load_model(config.model, for_training=True)[0], data.train_blocks, data.heldout_blocks, config
    )
    tuned = trained.model.eval()
    print(
        f"training loss {trained.log[0]['train_loss']:.3f} -> {trained.log[-1]['train_loss']:.3f} "
        f"({trained.plan.summary()})"
    )

    rows = {}
    for name, model in (("base", base), ("hyperfitted", tuned)):
        greedy = [c.token_ids for c in hf.generate(model, tokenizer, prompts, config.generate, show_progress=False)]
        rows[name] = {
            "ttr": hf.ttr(greedy),
            "distinct_3": hf.distinct_n(greedy, 3),
            "seq_rep_3": hf.seq_rep_n(greedy, 3),
        }
        print(f"{name:12s} " + "  ".join(f"{key} {value:.3f}" for key, value in rows[name].items()))

    geometry = hf.geometry_analysis(base, tuned, data.heldout_blocks, sample_tokens=256)
    effect = geometry["effect"]
    print(
        f"final-layer participation-ratio change beyond the runner-up: {effect['value']:+.2f} "
        f"[{effect['low']:+.2f}, {effect['high']:+.2f}]"
    )
    return {"generation": rows, "geometry": geometry, "train_log": trained.log}


if __name__ == "__main__":
    main(sys.argv[1:])
