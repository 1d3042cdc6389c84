"""Matrix-product precision: bf16 autocast (float32 weights) where the hardware runs it much faster, float32 elsewhere.

The policy covers the work whose cost is matrix products and whose numbers tolerate bf16
rounding: training steps and decoding. Everything the analyses *measure* by teacher forcing
(log-probabilities, ranks, entropies, hidden-state geometry, perplexities, the judge) runs in
float32 whatever the policy says (:func:`full_precision`), so a measurement never changes
with the machine, only the paths decoded and the weights trained can (near-ties, rounding).

``auto`` decides from a short measurement on the device, not from the processor's name: a
CPU that has bf16 instructions can still run bf16 products slower than float32 (the first
machine of this project did), and another runs them 2-8x faster. On a CPU, ``auto`` keeps
decoding in float32 even then: autocast casts every weight again at every decoding step, and
on the quick study that cost what the faster products saved (base decoding 29 s against 31 s,
hyperfitted 24 s against 22 s), while it would make the decoded paths depend on the machine.
Training steps are large products: there bf16 paid 1.7x (146 s against 249 s).

The config's default is nevertheless ``fp32``: a model trained under bf16 reaches the same loss
but is a different model, and on the quick study that moved claim 1 as far as another training
seed does (BENCHMARKS.md, "Precision"), which a one-seed study's intervals cannot show.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import asdict, dataclass, replace

import torch

from hyperfitting.hashing import weights_version

PRECISIONS = ("auto", "fp32", "bf16")
BF16_SPEEDUP_NEEDED = 1.5
"""auto picks bf16 when its matrix products run at least this many times faster than float32's."""
BF16_REFUSED_BELOW = 0.5
"""bf16 asked for by name is refused where its matrix products run at under this fraction of float32's speed: a CPU
without native bf16 products (AVX-512 BF16, AMX) computes them in a generic loop, about 140x slower than float32 on
this project's 2-core AVX2 machines (1.3 against 183 GFLOP/s), so one Gemma training batch took 9 minutes."""


@dataclass(frozen=True)
class PrecisionChoice:
    setting: str
    """What the config asked for: auto, fp32 or bf16."""
    training: str
    """What the training steps run in: fp32 or bf16 (autocast)."""
    decoding: str
    """What decoding runs in: fp32 or bf16 (autocast)."""
    reason: str
    fp32_gflops: float | None = None
    bf16_gflops: float | None = None
    tf32: bool = False
    """float32 matrix products in TensorFloat-32 on NVIDIA GPUs (model.tf32)."""

    @property
    def label(self) -> str:
        """One line for logs, reports and stage fingerprints."""
        if self.training == self.decoding:
            label = "bf16 autocast" if self.training == "bf16" else "fp32"
        else:
            label = f"training {self.training}, decoding {self.decoding}"
        return label + (", TF32 matrix products" if self.tf32 else "")

    def as_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def matmul_gflops(dtype: torch.dtype, device: torch.device, size: int = 1024, seconds: float = 0.3) -> float:
    """Square matrix products of ``dtype`` on ``device`` for about ``seconds``: the best rate seen, in GFLOP/s."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm up (kernel choice, caches)
    sync()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


_MEASURED: dict[str, tuple[float, float]] = {}  # device type -> (fp32, bf16) GFLOP/s: measured once per process


def resolve_precision(setting: str, device: torch.device | None = None, measure=matmul_gflops) -> PrecisionChoice:
    """What ``setting`` (auto, fp32, bf16) means on ``device`` (default: this process's), and why.

    Under several processes the decision is process 0's, sent to all, so they never disagree
    when the measured ratio sits near the threshold.
    """
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r}: choose from {', '.join(PRECISIONS)}")
    if setting != "auto":
        return PrecisionChoice(setting, setting, setting, "set explicitly")
    from hyperfitting.distributed import process_state

    state = process_state()
    device = device or state.device
    if measure is not matmul_gflops:  # a stand-in (tests): never cached
        fp32, bf16 = measure(torch.float32, device), measure(torch.bfloat16, device)
    else:
        if device.type not in _MEASURED:
            _MEASURED[device.type] = (measure(torch.float32, device), measure(torch.bfloat16, device))
        fp32, bf16 = _MEASURED[device.type]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        fp32, bf16 = broadcast_object_list([fp32, bf16], from_process=0)
    ratio = bf16 / fp32
    fast = ratio >= BF16_SPEEDUP_NEEDED
    decoding = "bf16" if fast and device.type != "cpu" else "fp32"
    reason = (
        f"auto: bf16 matrix products ran at {bf16:.0f} GFLOP/s against {fp32:.0f} in float32 on {device.type} "
        f"({ratio:.2f}x; bf16 needs {BF16_SPEEDUP_NEEDED}x)"
        + (
            "; decoding stays float32 on a CPU, where autocast's per-step weight casts cancel the gain"
            if fast and decoding == "fp32"
            else ""
        )
    )
    return PrecisionChoice("auto", "bf16" if fast else "fp32", decoding, reason, round(fp32, 1), round(bf16, 1))


def compute_precision(choice: PrecisionChoice | str, device: torch.device | None = None):
    """A context in which decoding runs at ``choice``'s decoding precision (bf16: autocast with float32 weights).

    Training steps set their own autocast inside it (:func:`training_autocast`), measurements theirs
    (:func:`full_precision`).
    """
    precision = choice.decoding if isinstance(choice, PrecisionChoice) else choice
    if precision != "bf16":
        return contextlib.nullcontext()
    from hyperfitting.distributed import process_state

    device = device or process_state().device
    # No cast cache: it lives as long as the outermost autocast region, so a model updated in place inside this one
    # (a training step, a control trained and then decoded) would keep running on the bf16 copies of its old weights.
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


@contextlib.contextmanager
def full_precision(device: torch.device):
    """Float32 inside, even within :func:`compute_precision` or with model.tf32 on: for everything the analyses
    measure."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def refuse_emulated_bf16(config, device: torch.device | None = None) -> None:
    """Stop before anything runs when the config names bf16 (model.precision or train.mixed_precision) on a device
    whose bf16 matrix products are measured at under BF16_REFUSED_BELOW of float32's: there the run would take many
    times as long, with an ETA that does not know it. ``auto`` settings are never refused: they measure and choose."""
    from hyperfitting.errors import ConfigError

    named = [
        f"{key}=bf16"
        for key, value in (
            ("model.precision", config.model.precision),
            ("train.mixed_precision", config.train.mixed_precision),
        )
        if value == "bf16"
    ]
    if not named:
        return
    measured = resolve_precision("auto", device)  # the same measurement as auto's, once per process
    fp32, bf16 = measured.fp32_gflops, measured.bf16_gflops
    if bf16 < BF16_REFUSED_BELOW * fp32:
        raise ConfigError(
            f"{' and '.join(named)}: bf16 matrix products run at {bf16:.1f} GFLOP/s against {fp32:.0f} in float32 "
            f"here ({bf16 / fp32:.3f}x: this processor has no native bf16 products, such as AVX-512 BF16 or AMX), so "
            f"the run would take many times as long. Set train.mixed_precision=auto (bf16 only where it is measured "
            "faster) or no, and model.precision=auto or fp32."
        )


def precision_for(config, say=print):
    """The context a command's training and decoding run in: model.precision resolved here, said once. (choice, context)

    Inside the context TensorFloat-32 is as model.tf32 says (PyTorch's own defaults differ between matrix products and
    convolutions): set, rather than left to whatever ran before, so the recorded setting is the one in force; the
    caller's setting is back afterwards. bf16 named on a device that emulates it is refused first
    (:func:`refuse_emulated_bf16`).
    """
    from hyperfitting.config import not_reading

    with not_reading():  # a check that computes nothing: the stages' outputs do not depend on the keys it looks at
        refuse_emulated_bf16(config)
        training = _training_choice(config)
    choice = replace(resolve_precision(config.model.precision), tf32=bool(getattr(config.model, "tf32", False)))
    say(f"Precision: {choice.label} ({choice.reason}){training}.")
    return choice, _with_tf32(choice.tf32, compute_precision(choice))


def _training_choice(config) -> str:
    """What train.mixed_precision=auto chose, for the precision line ("" for any other setting: the line says it)."""
    if config.train.mixed_precision != "auto":
        return ""
    measured = resolve_precision("auto")  # the measurement (and choice) training_precision reads, cached
    ratio = measured.bf16_gflops / measured.fp32_gflops
    steps = "bf16 autocast" if measured.training == "bf16" else "float32"
    return f"; training steps: {steps} (train.mixed_precision=auto: bf16 products {ratio:.2g}x float32's here)"


@contextlib.contextmanager
def _with_tf32(enabled: bool, inner):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        with inner:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def training_autocast(mixed_precision: str, device: torch.device):
    """The autocast of one training step: bf16, or float32 even inside a bf16 region (train.mixed_precision=no)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16", cache_enabled=False)


def training_precision(config) -> str:
    """The training steps' precision, as accelerate names it (no / bf16): train.mixed_precision, model.precision
    resolved (`model`), or measured here (`auto`: the training half of model.precision=auto)."""
    setting = config.train.mixed_precision
    if setting in ("no", "bf16"):
        return setting
    resolved = resolve_precision("auto" if setting == "auto" else config.model.precision)
    return "bf16" if resolved.training == "bf16" else "no"


_BF16_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, torch.nn.Module]]" = weakref.WeakKeyDictionary()


def decoding_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model a decode should run: inside a bf16 autocast on a GPU, a bf16 copy of a float32 model's parameters, so
    that a step reads half the bytes and autocast re-casts no weight at any step; elsewhere the model itself.

    The copy is made once per version of the weights (a model trained in place between two decodes gets a new one,
    and the old copy is let go first) and lives as long as the model. A model whose parameters are sharded (FSDP)
    or not all float32 decodes as it is.

    Not autocast bit for bit: autocast keeps the embeddings and the norms' products in float32, the copy runs them in
    bf16. On a tiny random Llama the largest logit difference from autocast was 0.0098 (autocast from float32: 0.0073),
    and 97.8% of greedy tokens agreed; bf16 decoding changes paths at near-ties either way.
    """
    parameter = next(model.parameters(), None)
    if (
        parameter is None
        or parameter.device.type != "cuda"
        or not torch.is_autocast_enabled(parameter.device.type)
        or torch.get_autocast_dtype(parameter.device.type) != torch.bfloat16
    ):
        return model
    if any(p.dtype != torch.float32 or type(p.data) is not torch.Tensor for p in model.parameters()):
        return model
    return bf16_copy(model)


def bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every parameter in bf16 (buffers as they are: rotary frequencies stay float32, as in a model
    loaded in bf16), remembered for this version of its weights."""
    import copy

    key = weights_version(model)
    remembered = _BF16_COPIES.get(model)
    if remembered is not None and remembered[0] == key:
        return remembered[1]
    _BF16_COPIES.pop(model, None)  # the old copy goes before the new one is made
    # deepcopy takes each parameter from the memo: its bf16 twin is made directly, never a second float32 copy (tied
    # weights are one parameter, so they stay tied).
    with torch.no_grad():
        memo = {
            id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False) for p in model.parameters()
        }
        twin = copy.deepcopy(model, memo).eval()
    # what the decoder remembers a failed graph capture for (a module attribute would register a submodule)
    object.__setattr__(twin, "decoding_source", weakref.ref(model))
    _BF16_COPIES[model] = (key, twin)
    return twin
