"""The rater's page: one self-contained HTML file, no server, no network.

It shows one pair at a time, records "A is better" / "B is better" / "Equal" (buttons, or the keys
1, 2, 3), keeps the judgements in the browser's local storage (so closing or reloading the page
loses nothing), and downloads them as a JSONL file for `hyperfit judge import`. The tasks are
embedded as JSON; the page knows nothing about which method wrote which text.
"""

from __future__ import annotations

import json

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Which continuation is better?</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; color: #222; line-height: 1.5; }
.prompt { background: #f4f4f4; padding: 0.7em 1em; border-radius: 6px; white-space: pre-wrap; }
.pair { display: flex; gap: 1em; margin: 1em 0; }
.side { flex: 1; border: 1px solid #ccc; border-radius: 6px; padding: 0.7em 1em; white-space: pre-wrap; }
.side h3 { margin: 0 0 0.4em 0; }
button { font-size: 1em; padding: 0.5em 1.2em; margin-right: 0.6em; cursor: pointer; }
#progress { color: #555; }
#done { display: none; }
</style></head><body>
<h1>Which continuation is better?</h1>
<p>Read the beginning, then the two continuations. Judge which one continues the text better: coherent, fluent, not
repetitive, in keeping with the beginning. The order of A and B means nothing. Keys: 1 = A better, 2 = B better, 3 = equal.</p>
<p><label>Your name or initials: <input id="rater" size="16"></label> <span id="progress"></span></p>
<div id="task">
  <div class="prompt" id="prompt"></div>
  <div class="pair">
    <div class="side"><h3>A</h3><div id="a"></div></div>
    <div class="side"><h3>B</h3><div id="b"></div></div>
  </div>
  <button id="choose-a">A is better</button><button id="choose-b">B is better</button><button id="choose-equal">Equal</button>
</div>
<div id="done"><p>All pairs judged. Thank you.</p></div>
<p><button id="undo">Undo last</button> <button id="download">Download my judgements</button> Send the downloaded file to the study's author.</p>
<script id="tasks" type="application/json">__TASKS__</script>
<script>
const tasks = JSON.parse(document.getElementById("tasks").textContent);
const storageKey = "pairwise-judgements-" + (tasks.length ? tasks[0].export_id : "none");
let saved = JSON.parse(localStorage.getItem(storageKey) || '{"rater": "", "choices": {}}');
const rater = document.getElementById("rater");
rater.value = saved.rater;
rater.addEventListener("input", () => { saved.rater = rater.value; store(); });
function store() { localStorage.setItem(storageKey, JSON.stringify(saved)); }
function next() { return tasks.find(t => !(t.task_id in saved.choices)); }
let order = Object.keys(saved.choices);
function show() {
  const task = next();
  document.getElementById("progress").textContent = Object.keys(saved.choices).length + " of " + tasks.length + " judged";
  document.getElementById("task").style.display = task ? "block" : "none";
  document.getElementById("done").style.display = task ? "none" : "block";
  if (!task) return;
  document.getElementById("prompt").textContent = task.prompt;
  document.getElementById("a").textContent = task.a;
  document.getElementById("b").textContent = task.b;
}
function choose(choice) {
  const task = next();
  if (!task) return;
  saved.choices[task.task_id] = choice;
  order.push(task.task_id);
  store(); show();
}
document.getElementById("choose-a").onclick = () => choose("A");
document.getElementById("choose-b").onclick = () => choose("B");
document.getElementById("choose-equal").onclick = () => choose("equal");
document.getElementById("undo").onclick = () => { const last = order.pop(); if (last) { delete saved.choices[last]; store(); show(); } };
document.addEventListener("keydown", event => {
  if (event.target === rater) return;
  if (event.key === "1") choose("A"); else if (event.key === "2") choose("B"); else if (event.key === "3") choose("equal");
});
document.getElementById("download").onclick = () => {
  const lines = tasks.filter(t => t.task_id in saved.choices).map(t => JSON.stringify(
    {export_id: t.export_id, task_id: t.task_id, rater: saved.rater || "anonymous", choice: saved.choices[t.task_id]}));
  const blob = new Blob([lines.join("\\n") + "\\n"], {type: "application/x-ndjson"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "judgements-" + (saved.rater || "anonymous").replace(/[^A-Za-z0-9_-]+/g, "_") + ".jsonl";
  document.body.appendChild(link); link.click(); link.remove();
};
show();
</script>
</body></html>
"""


def rater_page(tasks: list[dict]) -> str:
    """The page with ``tasks`` embedded (``</`` escaped, so no text can close the script element)."""
    data = json.dumps(tasks, ensure_ascii=False).replace("</", "<\\/")
    return PAGE.replace("__TASKS__", data)
