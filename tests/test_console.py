"""What ppo.py prints while its progress bar is up starts on a line of its own: the sample table,
--online's waiting and retraining lines, and the reward model's training log (an online retrain
runs under the bar, with a bar of its own that goes when it is done). A print would start on the
bar's line (as the sample table did). The program runs in a real terminal (tests/terminal.py)."""

import sys
from pathlib import Path

import pytest
import terminal

ROOT = Path(__file__).resolve().parent.parent

_why_not = terminal.missing()
needs_terminal = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")

UNDER_THE_BAR = """
import types, time, torch
import gpt2, reward
from machinery import comparisons, online, runs
enc = gpt2.get_tokenizer()
batch = {"truncated": torch.tensor([gpt2.encode(" a warm day")]), "scores": torch.tensor([0.5]),
         "kl": torch.zeros(1, 3)}
log_cfg = types.SimpleNamespace(log_interval=1, epochs=1, batch_size=2, lr=1e-5)
for update in runs.progress(types.SimpleNamespace(start=0, n_updates=3), 3):
    time.sleep(0.2)  # the bar is drawn by now
    runs.print_samples(enc, [gpt2.encode("It was")], batch, None)
    online.say(f"online: waiting for labels {update}")
    log = comparisons.TrainLog("sentiment", "tiny", log_cfg, 4, 2, 4, 2)
    for step in log.steps():
        time.sleep(0.1)
        log.step(step, 1.0, 0.5, 1e-5)
    log.done()
    log.held_out({"accuracy": 0.5, "loss": 1.3})
print("after training")
"""


@needs_terminal
def test_lines_printed_under_the_progress_bar_start_lines_of_their_own():
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + UNDER_THE_BAR
    t = terminal.Terminal([sys.executable, "-c", code], rows=60, cols=160)
    try:
        assert t.wait_exit(timeout=60) == 0, t.output[-2000:]
    finally:
        t.reap()
    lines = [line for line in t.text().split("\n") if line]
    starts = ("query (end)", "It was", "online: waiting", "train: ", "step ", "after training")
    for line in lines:  # each line is one thing: a bar line holds nothing else
        assert sum(s in line for s in ("ppo:", "train reward model:", *starts)) == 1, line
    bars = [line for line in lines if "%|" in line]
    assert len(bars) == 1 and bars[0].startswith("ppo:"), lines  # the inner bar went when done
    for update in range(3):
        assert f"online: waiting for labels {update}" in lines
    assert lines.count(f"{'query (end)':<42} | {'response (truncated)':<60} | score  | true   | kl")
    assert lines[-2].startswith("ppo: 100%") and lines[-1] == "after training"
