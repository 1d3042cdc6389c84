"""BENCHMARKS.md is generated from benchmarks/results/ (tools/benchmarks_md.py): the file in the repository is what the
result files give, and a benchmark's record renders with its command, commit, date and machine."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
spec = importlib.util.spec_from_file_location("benchmarks_md", ROOT / "tools" / "benchmarks_md.py")
benchmarks_md = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmarks_md)


def test_benchmarks_md_is_what_the_results_give():
    assert (ROOT / "BENCHMARKS.md").read_text() == benchmarks_md.render(), (
        "BENCHMARKS.md is out of date or edited by hand: run .venv/bin/python tools/benchmarks_md.py"
    )


def test_a_recorded_benchmark_renders_with_its_provenance(tmp_path):
    # benchmarks/common.py's record(), run as a benchmark script would, into a scratch results folder
    script = tmp_path / "bench.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import common\n"
        f"common.RESULTS = __import__('pathlib').Path({str(tmp_path / 'results')!r})\n"
        "common.record('toy', 'A toy benchmark', ['path', 'tokens/s', 'ratio'],\n"
        "              [['baseline', 100.0, 1.0], ['ours', 250.0, 2.5]], ['ours 2.50x the baseline'],\n"
        "              seconds=[1.5, 0.6])\n"
    )
    subprocess.run([sys.executable, str(script), "--flag"], check=True, capture_output=True)
    result = json.loads((tmp_path / "results" / "toy.json").read_text())
    assert result["command"].endswith("bench.py --flag")
    assert result["raw"] == {"seconds": [1.5, 0.6]}
    text = benchmarks_md.render(tmp_path / "results")
    assert "## A toy benchmark" in text
    assert "| ours | 250 | 2.5 |" in text
    assert "- ours 2.50x the baseline" in text
    assert f"commit `{result['commit'][:7]}" in text and result["date"] in text and result["machine"] in text
    # every benchmark script without a result is named, so none is silently missing
    assert "## Not recorded at this head" in text and "benchmarks/generation.py" in text
