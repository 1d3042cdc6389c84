"""Progress bars that remember how long they ran, so a stage's record says where its time went.

Every long loop in the toolkit shows a tqdm bar; :func:`progress_bar` is that bar, and when it closes it adds the
seconds it was open to its description's total. The stage runner (pipeline/graph.py) takes the totals when a stage
ends and writes them to its stage-done.json as ``step_seconds``: ``benchmarks/main_job.py`` shows them beside each
stage's wall time, which is how a long study is profiled without a profiler.
"""

from __future__ import annotations

import re
import time

from tqdm.auto import tqdm

_NUMBERED = re.compile(r" \d+/\d+$")  # "epoch 3/20": every epoch's bar adds to one "epoch" step
_seconds: dict[str, float] = {}


def step_name(description: str) -> str:
    """The step a bar's time counts toward: its description without an "N/M" counter."""
    return _NUMBERED.sub("", description)


class _TimedBar(tqdm):
    def __init__(self, *args, **kwargs):
        self._opened = time.perf_counter()
        self._timed = False
        # tqdm(iterable, desc, ...): kept here, since a disabled tqdm does not keep it
        self._step = step_name(str(kwargs.get("desc") or (args[1] if len(args) > 1 else "") or "unnamed"))
        super().__init__(*args, **kwargs)

    def close(self):
        if not self._timed:  # close runs again from __del__
            self._timed = True
            _seconds[self._step] = _seconds.get(self._step, 0.0) + time.perf_counter() - self._opened
        super().close()


def progress_bar(*args, **kwargs) -> tqdm:
    """A ``tqdm`` bar (same arguments) whose open time counts toward its description's step; hidden bars count too."""
    return _TimedBar(*args, **kwargs)


def take_step_seconds() -> dict[str, float]:
    """The seconds each step's bars were open since the last call, in the order the steps first ran; starts afresh."""
    taken = {step: round(seconds, 2) for step, seconds in _seconds.items()}
    _seconds.clear()
    return taken
