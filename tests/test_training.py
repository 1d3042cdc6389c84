import pytest
import torch

from hyperfitting.config import load_config
from hyperfitting.errors import DivergenceError
from hyperfitting.training.hyperfit import hyperfit
from hyperfitting.training.methods import prepare_for_training
from hyperfitting.training.trunk_cache import TrunkCache, start_at_block
from tests.conftest import make_tiny_model


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method, blocks", [("lora", "last:1"), ("lora", "1,2"), ("full", "last:2")])
def test_trunk_cache_gives_the_uncached_loss_and_gradients(tiny_model, method, blocks):
    config = load_config(overrides=[f"train.method={method}", f"train.blocks={blocks}"])
    model, plan = prepare_for_training(tiny_model, config.train)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # LoRA starts with B = 0; make every adapter weight receive a gradient
            torch.nn.init.normal_(parameter, std=0.05)
    ids = torch.randint(2, 97, (3, 24), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    expected = _grads(model)
    model.zero_grad()

    cache = TrunkCache.build(model, plan.first_trainable_block, ids, batch_size=2, max_memory_gb=1.0)
    with start_at_block(model, plan.first_trainable_block) as feed:
        feed(cache[torch.arange(3)])
        cached_loss = model(input_ids=ids, labels=ids).loss
    cached_loss.backward()
    assert plan.first_trainable_block > 0
    assert cached_loss.item() == pytest.approx(loss.item(), abs=1e-6)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5)
    # The skipped blocks are back in place afterwards.
    torch.testing.assert_close(model(input_ids=ids, labels=ids).loss, loss)


def test_trunk_cache_on_disk_equals_in_memory(tmp_path):
    model = make_tiny_model("llama")
    ids = torch.randint(2, 97, (5, 16), generator=torch.Generator().manual_seed(1))
    memory = TrunkCache.build(model, 2, ids, 2, max_memory_gb=1.0)
    disk = TrunkCache.build(model, 2, ids, 2, max_memory_gb=0.0, disk_path=tmp_path / "cache.npy")
    assert (tmp_path / "cache.npy").exists()
    torch.testing.assert_close(disk[torch.tensor([4, 0])], memory[torch.tensor([4, 0])])


def _tiny_run(tmp_path, *overrides):
    config = load_config(
        overrides=[
            "train.epochs=3",
            "train.batch_size=2",
            "train.lr=1e-2",
            "train.diversity_every=0",
            "train.blocks=last:2",
            *overrides,
        ]
    )
    # few token types: learnable in 3 epochs
    train = torch.randint(2, 8, (6, 16), generator=torch.Generator().manual_seed(2))
    heldout = torch.randint(2, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    return hyperfit(make_tiny_model("llama"), train, heldout, config, tmp_path), config, train, heldout


def test_hyperfit_lowers_the_training_loss_and_logs_every_epoch(tmp_path):
    result, *_ = _tiny_run(tmp_path)
    losses = [row["train_loss"] for row in result.log]
    assert [row["epoch"] for row in result.log] == [0, 1, 2, 3]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(row["heldout_loss"] > 0 for row in result.log)
    assert (tmp_path / "train_log.jsonl").read_text().count("\n") == 4


def test_the_weights_at_the_lowest_held_out_loss_are_those_of_a_run_stopped_there(tmp_path):
    from hyperfitting.training.hyperfit import LOWEST_HELDOUT, lowest_heldout_epoch, restore_trainable

    # the training distribution: it improves
    heldout = torch.randint(2, 8, (2, 16), generator=torch.Generator().manual_seed(4))
    config = load_config(
        overrides=[
            "train.epochs=4",
            "train.batch_size=2",
            "train.lr=1e-2",
            "train.diversity_every=0",
            "train.blocks=last:2",
        ]
    )
    train = torch.randint(2, 8, (6, 16), generator=torch.Generator().manual_seed(2))
    long = hyperfit(make_tiny_model("llama"), train, heldout, config, tmp_path / "long")
    epoch = lowest_heldout_epoch(long.log)
    assert epoch > 0 and long.log[epoch]["heldout_loss"] == min(r["heldout_loss"] for r in long.log)
    stopped = hyperfit(
        make_tiny_model("llama"),
        train,
        heldout,
        load_config(overrides=[*config_overrides(config), f"train.epochs={epoch}"]),
        tmp_path / "stopped",
    )
    saved = torch.load(tmp_path / "long" / LOWEST_HELDOUT, weights_only=True)
    assert saved["epoch"] == epoch
    model = restore_trainable(long.model, saved["trainable"], tmp_path / "long")
    expected = dict(stopped.model.named_parameters())
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter, expected[name])


def test_a_lora_checkpoint_holds_the_trainable_weights_alone_even_beside_a_tied_head(tmp_path):
    from hyperfitting.training.hyperfit import LOWEST_HELDOUT
    from hyperfitting.training.parallel import CHECKPOINT

    model = make_tiny_model("gpt2")  # its head is its (frozen) embedding, under a second name
    assert model.lm_head.weight is model.transformer.wte.weight
    train = torch.randint(2, 8, (6, 16), generator=torch.Generator().manual_seed(2))
    config = load_config(overrides=["train.epochs=2", "train.batch_size=2", "train.lr=1e-2", "train.blocks=last:1"])
    result = hyperfit(model, train, train[:2], config, tmp_path)
    trainable = {name for name, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    for saved in (
        torch.load(tmp_path / LOWEST_HELDOUT, weights_only=True),
        torch.load(tmp_path / CHECKPOINT, weights_only=False),
    ):
        assert set(saved["trainable"]) == trainable  # not the frozen head (113 MB of SmolLM2-135M's)


def test_no_control_is_kept_when_the_held_out_loss_never_improved(tmp_path):
    from hyperfitting.config import ModelArgs
    from hyperfitting.training.hyperfit import load_lowest_heldout, lowest_heldout_epoch

    worse = [{"epoch": 0, "heldout_loss": 3.0}, {"epoch": 1, "heldout_loss": 3.5}, {"epoch": 2, "heldout_loss": 4.0}]
    assert lowest_heldout_epoch(worse) == 0  # so no epoch saves its weights: the control is the base model
    assert lowest_heldout_epoch([{"epoch": 0, "heldout_loss": float("nan")}]) is None  # no held-out blocks
    assert load_lowest_heldout(ModelArgs(), tmp_path) == (None, 0)


def config_overrides(config) -> list[str]:
    train = config.train
    return [
        f"train.batch_size={train.batch_size}",
        f"train.lr={train.lr}",
        "train.diversity_every=0",
        f"train.blocks={train.blocks}",
    ]


def test_resuming_from_a_checkpoint_reaches_the_same_weights(tmp_path):
    straight, *_ = _tiny_run(tmp_path / "straight")
    _tiny_run(tmp_path / "interrupted", "train.epochs=1")  # stops after epoch 1, checkpoint kept
    resumed, *_ = _tiny_run(tmp_path / "interrupted")
    assert [r["train_loss"] for r in resumed.log] == pytest.approx([r["train_loss"] for r in straight.log], abs=1e-6)
    a = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    for name, parameter in resumed.model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter, a[name])


def test_a_non_finite_loss_stops_training_with_a_clear_message(tmp_path):
    with pytest.raises(
        DivergenceError, match=r"The training loss became (nan|inf) in epoch 1\. The last good checkpoint"
    ):
        _tiny_run(tmp_path, "train.lr=1e30", "train.method=full", "train.blocks=all", "train.epochs=2")


def test_preflight_refuses_a_run_that_cannot_fit(tmp_path):
    from hyperfitting.training import preflight

    model = make_tiny_model("llama")
    need = preflight.estimate(model, 10**6, 0, 3, False, 4, 2, 16, 2, 2.0)
    preflight.check_fits(need, torch.device("cpu"), tmp_path)  # a tiny run fits
    huge = preflight.Estimate(
        weights=10**9, optimizer=10**15, trunk_cache_memory=0, trunk_cache_disk=0, activations=0, saved_output=0
    )
    with pytest.raises(
        preflight.ResourceError, match=r"this run needs about 931322\.6 GiB more of RAM .* Lower train.batch_size"
    ):
        preflight.check_fits(huge, torch.device("cpu"), tmp_path)
    # Weights are already loaded when the check runs: they are not asked for a second time.
    loaded = preflight.Estimate(
        weights=10**15, optimizer=0, trunk_cache_memory=0, trunk_cache_disk=0, activations=0, saved_output=0
    )
    preflight.check_fits(loaded, torch.device("cpu"), tmp_path)
    # FSDP over 8 processes: each holds an eighth of the weights and of the optimizer state.
    whole, sharded = (preflight.estimate(model, 10**6, 0, 3, False, 4, 2, 16, 2, 2.0, shards=n) for n in (1, 8))
    assert sharded.optimizer == whole.optimizer // 8 and sharded.weights == whole.weights // 8
    disk = preflight.Estimate(
        weights=0, optimizer=0, trunk_cache_memory=0, trunk_cache_disk=10**16, activations=0, saved_output=0
    )
    with pytest.raises(preflight.ResourceError, match="of disk in"):
        preflight.check_fits(disk, torch.device("cpu"), tmp_path)


def test_training_stops_at_the_target_loss_and_says_when_the_cap_came_first(tmp_path, capsys):
    capped, *_ = _tiny_run(tmp_path / "capped", "train.until_loss=1e-6")
    assert [row["epoch"] for row in capped.log] == [0, 1, 2, 3]  # never reached: every epoch up to the cap
    assert "short of the target" in capsys.readouterr().out
    first = capped.log[1]["train_loss"]
    early, *_ = _tiny_run(tmp_path / "early", f"train.until_loss={first + 1e-6}")
    assert [row["epoch"] for row in early.log] == [0, 1]  # reached after epoch 1: stopped there
    assert "Reached the target loss" in capsys.readouterr().out


def test_the_heldout_loss_is_measured_at_the_start_every_so_often_and_after_the_last_epoch(tmp_path):
    import math

    def measured(log):
        return [row["epoch"] for row in log if math.isfinite(row["heldout_loss"])]

    every, *_ = _tiny_run(tmp_path / "every", "train.until_loss=1e-6")
    assert measured(every.log) == [0, 1, 2, 3]
    sparse, *_ = _tiny_run(tmp_path / "sparse", "train.until_loss=1e-6", "train.heldout_every=2")
    assert measured(sparse.log) == [0, 2, 3]  # the cap (3) is the last epoch: always measured
    # measuring changes no training
    assert [r["train_loss"] for r in sparse.log] == [r["train_loss"] for r in every.log]
    first = every.log[1]["train_loss"]
    ends, *_ = _tiny_run(tmp_path / "ends", f"train.until_loss={first + 1e-6}", "train.heldout_every=0")
    assert measured(ends.log) == [0, 1]  # the target reached after epoch 1: that epoch is the last, measured


def test_a_rising_loss_is_a_divergence_not_a_data_point(tmp_path):
    # A finite loss that climbs far above its start (the Gemma-3 controls went 6.0 -> 9.8) stops the run.
    with pytest.raises(DivergenceError, match=r"Training diverged: the loss rose from .* lower train.lr"):
        _tiny_run(
            tmp_path,
            "train.lr=30",
            "train.method=full",
            "train.blocks=all",
            "train.epochs=3",
            "train.diverge_factor=1.01",
        )


def test_an_uneven_batch_split_or_accumulation_is_refused_up_front():
    from hyperfitting.errors import ConfigError
    from hyperfitting.training.hyperfit import check_batch_split

    check_batch_split(8, 4, 2, 1)
    check_batch_split(10, 4, 2, 1)  # the last batch of 2 still splits 1 + 1
    with pytest.raises(
        ConfigError, match=r"the last batch of 1 does not divide by 2\)\. Use data.train_blocks .* a multiple of 2"
    ):
        check_batch_split(9, 4, 2, 1)
    with pytest.raises(
        ConfigError, match=r"\(the batch does not divide by 2\)\. Use a train.batch_size that is a multiple of 2"
    ):
        check_batch_split(10, 3, 2, 1)
    check_batch_split(12, 4, 1, 3)
    with pytest.raises(ConfigError, match=r"train.grad_accumulation=2 does not divide the 3 batches of an epoch"):
        check_batch_split(12, 4, 1, 2)


def test_resuming_from_a_checkpoint_that_does_not_fit_is_refused(tmp_path):
    from hyperfitting.errors import CheckpointError

    _tiny_run(tmp_path, "train.epochs=1")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    renamed = next(iter(checkpoint["trainable"]))
    checkpoint["trainable"][renamed + "_renamed"] = checkpoint["trainable"].pop(renamed)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"1 trainable weights missing .* and 1 unknown"):
        _tiny_run(tmp_path)


def test_the_controls_learning_rate_sweep_ranks_by_training_loss_and_sets_diverged_rates_last(
    tiny_model_folder, tmp_path
):
    from types import SimpleNamespace

    from hyperfitting.pipeline.controls import sweep_learning_rate

    config = load_config(
        overrides=[
            f"model.name={tiny_model_folder}",
            "train.batch_size=2",
            "train.until_loss=null",
            "study.controls_lr_lora=1e-3",
            "study.controls_lr_sweep=[1.0,30.0,1e6]",
            "study.controls_sweep_epochs=2",
        ]
    )
    blocks = torch.randint(5, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    rows = sweep_learning_rate(config, "lora:last:1", blocks, SimpleNamespace(heldout_blocks=blocks), tmp_path)
    assert [row["lr"] for row in rows][:2] == [0.03, 0.001]  # the faster rate reaches the lower training loss
    assert rows[0]["train_loss"] < rows[1]["train_loss"] and not rows[0]["diverged"]
    assert rows[-1]["lr"] == 1000.0 and rows[-1]["diverged"]  # an absurd rate is tried, marked, and never chosen
    assert not list(tmp_path.glob("sweep-*"))  # the trials leave nothing behind


def test_a_resumed_control_keeps_its_sweep_and_skips_the_rates_that_diverged(tiny_model_folder, tmp_path, monkeypatch):
    # A control killed while it trained its second rate: the sweep and the rate that diverged are on disk, and the
    # resume trains neither again (an absurd rate stands in for the diverged one: trained, it would diverge again).
    from types import SimpleNamespace

    from hyperfitting.pipeline import controls
    from hyperfitting.rundir import write_json

    monkeypatch.setattr(controls, "measure_control", lambda *args: {})  # decoding and geometry: not under test here
    config = load_config(
        overrides=[
            f"model.name={tiny_model_folder}",
            "train.batch_size=2",
            "train.until_loss=null",
            "study.controls_epochs=1",
            "study.controls_lr_sweep=[1.0,1e6]",
        ]
    )
    blocks = torch.randint(5, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    sweep = [
        {"lr": 1e3, "train_loss": 1.0, "epochs": 3, "diverged": False},
        {"lr": 1e-3, "train_loss": 2.0, "epochs": 3, "diverged": False},
    ]
    write_json(tmp_path / "lr_sweep.json", sweep)
    write_json(
        tmp_path / "diverged.json", [{"lr": 1e3, "initial_train_loss": 4.0, "final_train_loss": 9.0, "epochs": 2}]
    )
    row = controls.run_control(
        config, "lora:last:1", blocks, SimpleNamespace(heldout_blocks=blocks), None, None, None, None, tmp_path
    )
    assert not row["diverged"] and row["lr"] == 1e-3 and row["epochs"] == 1
    assert row["lr_sweep"] == sweep and row["diverged_at"] == [1e3]


def test_a_checkpoint_trained_at_another_rate_or_seed_is_not_resumed(tmp_path):
    # Its optimizer state would carry the old rate on, and the run would be recorded under the new one.
    from hyperfitting.errors import CheckpointError

    _tiny_run(tmp_path, "train.epochs=1")
    with pytest.raises(
        CheckpointError, match=r"trained with \{'lr': 0.01, 'seed': 0\}, this run asks for \{'lr': 0.02"
    ):
        _tiny_run(tmp_path, "train.lr=2e-2")
    with pytest.raises(CheckpointError, match=r"'seed': 1\}"):
        _tiny_run(tmp_path, "train.seed=1")
    result, *_ = _tiny_run(tmp_path)  # the same recipe goes on from its checkpoint
    assert [row["epoch"] for row in result.log] == [0, 1, 2, 3]


def test_preflight_counts_the_checkpoint_in_ram_and_twice_on_disk(tmp_path, monkeypatch):
    from hyperfitting.training import preflight

    need = preflight.estimate(make_tiny_model("llama"), 10**6, 0, 3, False, 4, 2, 16, 2, 2.0)
    assert need.checkpoint == 12 * 10**6 and need.disk == need.saved_output + 2 * need.checkpoint
    assert need.checkpoint_memory == need.checkpoint  # a replicated run gathers it whole in process 0
    sharded = preflight.estimate(make_tiny_model("llama"), 10**6, 0, 3, False, 4, 2, 16, 2, 2.0, shards=4)
    # each process writes its shards
    assert sharded.checkpoint == need.checkpoint and sharded.checkpoint_memory == need.checkpoint // 4
    ram = preflight.Estimate(
        weights=0,
        optimizer=0,
        trunk_cache_memory=0,
        trunk_cache_disk=0,
        activations=0,
        saved_output=0,
        checkpoint=10**15,
        checkpoint_memory=10**15,
    )
    with pytest.raises(preflight.ResourceError, match=r"needs about 931322\.6 GiB more of RAM"):
        preflight.check_fits(ram, torch.device("cpu"), tmp_path)
    # On an accelerator the checkpoint still passes through host RAM.
    with pytest.raises(
        preflight.ResourceError, match=r"checkpoint copies the trainable weights and optimizer state into host RAM"
    ):
        preflight.check_fits(ram, torch.device("meta"), tmp_path)
    from collections import namedtuple

    monkeypatch.setattr(
        preflight.shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(0, 0, 3 * 2**30)
    )
    disk = preflight.Estimate(
        weights=0,
        optimizer=0,
        trunk_cache_memory=0,
        trunk_cache_disk=0,
        activations=0,
        saved_output=0,
        checkpoint=2 * 2**30,
    )
    with pytest.raises(
        preflight.ResourceError,
        match=r"about 4\.0 GiB of disk .* checkpoint while it is replaced 4\.0\) but 3\.0 GiB are free",
    ):
        preflight.check_fits(disk, torch.device("cpu"), tmp_path)


def test_divergence_is_a_rise_past_the_factor_or_a_loss_that_stays_above_its_start():
    from hyperfitting.training.hyperfit import divergence

    def log(*losses):
        return [{"epoch": i, "train_loss": loss} for i, loss in enumerate(losses)]

    assert divergence(log(6.0, 4.0, 2.0, 0.5), 1.5, 3) is None
    assert "rose from 6.000 to 9.800 in epoch 2" in divergence(log(6.0, 7.0, 9.8), 1.5, 3)  # Gemma's quick controls
    assert divergence(log(6.0, 6.5, 6.2), 1.5, 3) is None  # above the start, but not for 3 epochs yet
    assert "stayed above its starting value 6.000 for 3 epochs in a row (epochs 1-3" in divergence(
        log(6.0, 6.5, 6.2, 6.1), 1.5, 3
    )
    assert divergence(log(6.0, 6.5, 5.9, 6.1, 6.2), 1.5, 3) is None  # a dip below the start resets the count


def _stepped(seed: int, trainable: str):
    """A tiny model with the parameters whose names contain ``trainable`` trained for one Adam step."""
    model = make_tiny_model("llama", seed=seed)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable in name)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(2, 97, (2, 12), generator=torch.Generator().manual_seed(seed))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return model, optimizer


def test_a_sharded_checkpoint_resumes_in_one_process_and_refuses_another_model(tmp_path):
    # The format FSDP runs write (torch.distributed.checkpoint, one shard per process), read back here by the replicated
    # strategy without any process group: weights and Adam state as saved, the progress with them.
    from types import SimpleNamespace

    from hyperfitting.errors import CheckpointError
    from hyperfitting.training.parallel import (
        CHECKPOINT,
        SHARDED_CHECKPOINT,
        Replicated,
        remove_checkpoints,
        save_sharded_checkpoint,
    )

    saved, saved_optimizer = _stepped(0, "layers.1.")
    (tmp_path / CHECKPOINT).write_bytes(b"an older replicated checkpoint")
    save_sharded_checkpoint(saved, saved_optimizer, {"log": [{"epoch": 0}, {"epoch": 1}], "epoch": 1}, tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()  # superseded
    strategy = Replicated(SimpleNamespace(num_processes=1, is_main_process=True, process_index=0))

    fresh, fresh_optimizer = _stepped(1, "layers.1.")
    progress = strategy.load_checkpoint(fresh, fresh_optimizer, tmp_path)
    assert progress["epoch"] == 1 and len(progress["log"]) == 2
    for (name, a), b in zip(saved.named_parameters(), fresh.parameters()):
        if a.requires_grad:
            assert torch.equal(a, b), name
    moments = [
        (saved_optimizer.state[a]["exp_avg_sq"], fresh_optimizer.state[b]["exp_avg_sq"])
        for a, b in zip(saved.parameters(), fresh.parameters())
        if a.requires_grad
    ]
    assert all(torch.equal(a, b) for a, b in moments)

    # A kill between the save's two renames leaves the previous checkpoint as checkpoint.old: it is still found.
    (tmp_path / SHARDED_CHECKPOINT).rename(tmp_path / (SHARDED_CHECKPOINT + ".old"))
    assert strategy.load_checkpoint(*_stepped(1, "layers.1."), tmp_path)["epoch"] == 1

    other, other_optimizer = _stepped(1, "layers.0.")  # trains weights the checkpoint does not have
    with pytest.raises(
        CheckpointError, match=r"9 trainable weights missing \(model\.layers\.0\..* and 9 unknown \(model\.layers\.1\."
    ):
        strategy.load_checkpoint(other, other_optimizer, tmp_path)  # named from the checkpoint's index, before any read
    remove_checkpoints(tmp_path)
    assert strategy.load_checkpoint(other, other_optimizer, tmp_path) is None


def test_a_checkpoint_is_skipped_while_the_last_one_cost_more_than_its_share_of_training():
    from types import SimpleNamespace

    from hyperfitting.training.hyperfit import _checkpoint_due

    def run(share, cost, trained):
        return SimpleNamespace(
            args=SimpleNamespace(checkpoint_max_share=share),
            checkpoint_cost=cost,
            trained_since_checkpoint=trained,
            strategy=SimpleNamespace(processes=1),
        )

    assert _checkpoint_due(run(0.1, 0.0, 5.0), final=False)  # nothing written yet: the first epoch writes one
    assert not _checkpoint_due(run(0.1, 13.0, 60.0), final=False)  # a 13 s write after 60 s of training: more than 10%
    assert _checkpoint_due(run(0.1, 13.0, 130.0), final=False)  # after 130 s it is 10%: due
    assert _checkpoint_due(run(0.1, 13.0, 1.0), final=True)  # the final epoch always writes one
    assert _checkpoint_due(run(None, 13.0, 1.0), final=False)  # null: after every epoch


def test_a_run_records_which_epochs_wrote_a_checkpoint(tmp_path):
    train = torch.randint(2, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    config = load_config(
        overrides=[
            "train.method=full",
            "train.blocks=all",
            "train.epochs=3",
            "train.until_loss=null",
            "train.batch_size=2",
            "train.checkpoint_max_share=null",
        ]
    )
    result = hyperfit(make_tiny_model("llama"), train, train[:1], config, tmp_path)
    assert [row.get("checkpointed") for row in result.log] == [None, True, True, True]
    # A write that costs more than its share of training is skipped until the final epoch, which always writes one.
    frugal = load_config(
        overrides=[
            "train.method=full",
            "train.blocks=all",
            "train.epochs=3",
            "train.until_loss=null",
            "train.batch_size=2",
            "train.checkpoint_max_share=1e-9",
        ]
    )
    result = hyperfit(make_tiny_model("llama"), train, train[:1], frugal, tmp_path / "frugal")
    assert [row.get("checkpointed") for row in result.log] == [None, True, False, True]
