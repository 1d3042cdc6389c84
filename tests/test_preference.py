"""Human preference, offline: blind export, the rater's page in a real browser, import with its refusals, and
scoring."""

import json
import re
import shutil
import time

import pytest

from hyperfitting.errors import HyperfitError
from hyperfitting.preference.export import TASK_FIELDS, Candidates, make_export, write_export
from hyperfitting.preference.page import PAGE
from hyperfitting.preference.scoring import bradley_terry, fleiss_kappa, outcomes, read_judgements, score_judgements

METHODS = ("hyperfitted", "greedy", "top-p", "contrastive")


def _candidates(prompts: int = 4) -> Candidates:
    # Texts that name no method: whatever leaks into a task file must come from the export, not from the texts.
    texts = {m: [f"continuation {i} by writer {k}" for i in range(prompts)] for k, m in enumerate(METHODS)}
    texts["human"] = [f"original continuation {i}" for i in range(prompts)]
    return Candidates("fiction", [f"beginning {i}" for i in range(prompts)], texts)


def test_the_export_is_blind_seeded_and_keeps_the_key_apart(tmp_path):
    tasks, key = make_export(_candidates(), seed=3)
    assert len(tasks) == 4 * len(METHODS)
    assert all(tuple(t) == TASK_FIELDS for t in tasks)  # texts and opaque ids, nothing else
    dumped = json.dumps(tasks)
    assert not any(re.search(rf"\b{re.escape(m)}\b", dumped) for m in (*METHODS, "human"))
    # Each method appears on both sides, and the order does not group a method's tasks together.
    sides = {
        m: {("a" if task["a"] == m else "b") for task in key["tasks"].values() if m in (task["a"], task["b"])}
        for m in METHODS
    }
    assert all(s == {"a", "b"} for s in sides.values())
    firsts = [next(m for m in METHODS if m in (task["a"], task["b"])) for task in key["tasks"].values()]
    assert firsts != sorted(firsts, key=METHODS.index)
    assert make_export(_candidates(), seed=3) == (
        tasks,
        {**key, "created": make_export(_candidates(), seed=3)[1]["created"]},
    )
    assert make_export(_candidates(), seed=4)[1]["export_id"] != key["export_id"]

    folder = write_export(tmp_path / "run", tasks, key)
    assert sorted(p.name for p in (folder / "for-raters").iterdir()) == ["judge.html", "tasks.csv", "tasks.jsonl"]
    page = (folder / "for-raters" / "judge.html").read_text()
    embedded = re.search(r'<script id="tasks" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded) == tasks  # the page carries the tasks and nothing more
    assert not any(re.search(rf"\b{re.escape(m)}\b", PAGE, re.I) for m in (*METHODS, "human", "hyperfit"))
    with pytest.raises(HyperfitError, match="already holds export .* --overwrite"):
        write_export(tmp_path / "run", tasks, key)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_import_refuses_what_does_not_belong_and_names_the_line(tmp_path):
    tasks, key = make_export(_candidates(), seed=0)
    good = {"export_id": key["export_id"], "task_id": tasks[0]["task_id"], "rater": "ann", "choice": "A"}
    cases = {
        "made for export hf-other": {**good, "export_id": "hf-other"},
        "is not in export": {**good, "task_id": "hf-x-0000"},
        "choice 'C' is not one of": {**good, "choice": "C"},
        "exactly the fields": {k: v for k, v in good.items() if k != "rater"},
    }
    for message, row in cases.items():
        with pytest.raises(HyperfitError, match=f"line 2: .*{re.escape(message)}"):
            read_judgements([_write(tmp_path / "f.jsonl", [good, row])], key)
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(HyperfitError, match="broken.jsonl, line 2: not a JSON object"):
        read_judgements([tmp_path / "broken.jsonl"], key)
    one = _write(tmp_path / "ann.jsonl", [good])
    with pytest.raises(HyperfitError, match="rater 'ann' already judged task"):
        read_judgements([one, _write(tmp_path / "ann-again.jsonl", [good])], key)
    # Two raters on the same task merge.
    merged = read_judgements([one, _write(tmp_path / "bob.jsonl", [{**good, "rater": "bob", "choice": "B"}])], key)
    assert [j["rater"] for j in merged] == ["ann", "bob"]


def test_scores_follow_the_judgements():
    tasks, key = make_export(_candidates(prompts=6), seed=1)
    judgements = []
    for task_id, task in key["tasks"].items():
        # Rater ann: hyperfitted always beats the human text, which beats everything else; bob agrees, except for ties
        # on prompt 0.
        rank = {"hyperfitted": 2, "human": 1}
        winner = max(task["a"], task["b"], key=lambda m: rank.get(m, 0))
        choice = "A" if winner == task["a"] else "B"
        judgements.append({"export_id": key["export_id"], "task_id": task_id, "rater": "ann", "choice": choice})
        judgements.append(
            {
                "export_id": key["export_id"],
                "task_id": task_id,
                "rater": "bob",
                "choice": "equal" if task["prompt_index"] == 0 else choice,
            }
        )
    scores = score_judgements(judgements, key, "people")
    assert scores["against_human"]["hyperfitted"]["preferred_or_equal"]["value"] == 1.0
    assert scores["against_human"]["greedy"]["wins"] == 0 and scores["against_human"]["greedy"]["ties"] == 1
    strength = scores["bradley_terry"]
    assert strength["human"]["strength"] == 0.0
    assert strength["hyperfitted"]["low"] > 0 > strength["greedy"]["high"]
    assert 0.5 < scores["agreement"]["fleiss_kappa"] < 1.0  # agreement on all but the first prompt's pairs


def test_fleiss_kappa_against_a_hand_computation():
    # Two raters, four items: agree A, agree B, disagree (A/B), agree equal.
    # P_i = 1, 1, 0, 1 -> mean 0.75; category shares A 3/8, B 3/8, equal 2/8 -> chance 0.34375.
    assert fleiss_kappa([["A", "A"], ["B", "B"], ["A", "B"], ["equal", "equal"]]) == pytest.approx(
        (0.75 - 0.34375) / (1 - 0.34375)
    )
    assert fleiss_kappa([["A"], ["B"]]) is None  # nobody judged an item twice
    assert fleiss_kappa([["A", "A"], ["A", "A"]]) is None  # one category only: chance agreement is 1


def test_bradley_terry_orders_by_wins():
    rows = (
        [{"first": "x", "second": "y", "tie": False}] * 8
        + [{"first": "y", "second": "x", "tie": False}] * 2
        + [{"first": "y", "second": "human", "tie": False}] * 5
        + [{"first": "human", "second": "y", "tie": True}] * 5
    )
    strengths = bradley_terry(rows, resamples=50)
    assert strengths["x"]["strength"] > strengths["y"]["strength"] > strengths["human"]["strength"] == 0.0


def test_outcomes_name_winner_and_loser():
    _, key = make_export(_candidates(prompts=1), seed=0)
    task_id, task = next(iter(key["tasks"].items()))
    (row,) = outcomes([{"export_id": key["export_id"], "task_id": task_id, "rater": "r", "choice": "B"}], key)
    assert (row["first"], row["second"], row["tie"]) == (task["b"], task["a"], False)


def _reload_keeps(page, progress: str, seconds: float = 20.0) -> bool:
    """Reload until the page shows ``progress`` again; False if it never does within ``seconds``.

    Chromium hands a page's local-storage writes to its browser process asynchronously, so a reload issued
    the instant after a click can, on a loaded machine, read the storage from before the click (CI saw
    "0 of 12" once). A person reloads seconds later; what this asserts is that the judgements do persist.
    A reload that reads stale storage writes nothing (the page only stores on a choice or on typing).
    """
    deadline = time.monotonic() + seconds
    while True:
        page.reload()
        if page.text_content("#progress") == progress:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


@pytest.mark.e2e
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs the Debian chromium package (make test installs it as root)"
)
def test_the_page_in_a_real_browser_clicks_reloads_downloads_and_imports(tmp_path):
    """Headless Chromium: judge some pairs, reload (progress kept), judge the rest, undo one, download, import,
    score."""
    from playwright.sync_api import sync_playwright

    tasks, key = make_export(_candidates(prompts=3), seed=2)
    folder = write_export(tmp_path / "run", tasks, key)
    url = (folder / "for-raters" / "judge.html").as_uri()
    buttons = ["#choose-a", "#choose-b", "#choose-equal"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_context(accept_downloads=True).new_page()
        page.goto(url)
        page.fill("#rater", "ann")
        shown = [page.text_content("#prompt")]
        for i in range(5):
            assert page.text_content("#a") == tasks[i]["a"] and page.text_content("#b") == tasks[i]["b"]
            page.click(buttons[i % 3])
        assert page.text_content("#progress") == f"5 of {len(tasks)} judged"
        assert _reload_keeps(page, f"5 of {len(tasks)} judged") and page.input_value("#rater") == "ann"
        assert page.text_content("#a") == tasks[5]["a"]
        for i in range(5, len(tasks)):
            page.keyboard.press(str(i % 3 + 1))  # the keys 1, 2, 3
            shown.append(page.text_content("#prompt"))
        assert page.is_visible("#done")
        page.click("#undo")  # the last judgement is taken back and its pair shown again
        assert page.text_content("#a") == tasks[-1]["a"]
        page.click("#choose-equal")
        with page.expect_download() as download:
            page.click("#download")
        path = tmp_path / download.value.suggested_filename
        download.value.save_as(path)
        browser.close()
    assert path.name == "judgements-ann.jsonl"
    judgements = read_judgements([path], key)
    assert [j["task_id"] for j in judgements] == [t["task_id"] for t in tasks]
    expected = [["A", "B", "equal"][i % 3] for i in range(len(tasks) - 1)] + ["equal"]
    assert [j["choice"] for j in judgements] == expected
    scores = score_judgements(judgements, key, "people")
    assert scores["judgements"] == len(tasks) and scores["raters"] == ["ann"]
