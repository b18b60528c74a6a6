"""reward.py: the preference loss and TF-style Adam on hand-worked numbers, normalization, the
reward read at the last real token, checkpoints, bad input, and the whole sample -> scripted
label -> train -> eval path on the tiny model."""

import dataclasses
import inspect
import itertools
import json
import math
import sys

import pytest
import torch

import reward
from gpt2 import GPT2, PAD_ID, PRESETS, left_pad
from machinery import comparisons, optim, tasks
from machinery.optim import AdamTF


def tiny_random_rm(seed=0):
    torch.manual_seed(seed)
    return reward.RewardModel(GPT2.from_config(dataclasses.replace(PRESETS["tiny"]))).eval()


def test_preference_loss_by_hand():
    # row 0: softmax([0, ln 3]) = [1/4, 3/4], best 1 -> -ln(3/4); row 1: same rewards, best 0 ->
    # -ln(1/4)
    rewards = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    loss = reward.preference_loss(rewards, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)
    # N = 2 is Bradley-Terry: -log sigmoid(r_best - r_other) = log(1 + e^-2) for a margin of 2
    assert reward.preference_loss(
        torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    ).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # N = 4, all equal: ln 4 whatever the label
    assert reward.preference_loss(
        torch.zeros(3, 4), torch.tensor([0, 2, 3])
    ).item() == pytest.approx(math.log(4))
    assert (
        reward.preference_accuracy(
            torch.tensor([[0.1, 0.5, 0.2], [0.9, 0.0, 0.1]]), torch.tensor([1, 2])
        )
        == 0.5
    )


def first_argmax_accuracy(rewards, best):
    """The old count (argmax: the first of tied candidates wins), the reference below averages."""
    return (rewards.argmax(-1) == best).float().mean().item()


def test_accuracy_counts_a_tie_as_a_share_of_a_win():
    # a constant reward model on N = 4 with the label on candidate 0: chance, 1/4, exactly (argmax
    # would credit candidate 0 every time: 1.0)
    const = torch.zeros(5, 4)
    assert reward.preference_accuracy(const, torch.zeros(5, dtype=torch.long)).item() == 0.25
    assert reward.preference_accuracy(const, torch.tensor([0, 1, 2, 3, 3])).item() == 0.25
    # by hand: a 2-way tie holding the best, 1/2; a 2-way tie without it, 0; a 3-way tie with
    # it, 1/3; a clear win, 1 -> (1/2 + 0 + 1/3 + 1) / 4
    rewards = torch.tensor(
        [[0.5, 0.9, 0.9, 0.1], [0.9, 0.9, 0.2, 0.3], [0.4, 0.4, 0.0, 0.4], [0.1, 0.2, 0.3, 0.8]]
    )
    best = torch.tensor([2, 3, 1, 3])
    expect = (1 / 2 + 0 + 1 / 3 + 1) / 4
    assert reward.preference_accuracy(rewards, best).item() == pytest.approx(expect, abs=1e-7)
    assert reward.preference_accuracy(rewards[:1], best[:1]).item() == 0.5


@pytest.mark.parametrize("N", [3, 4])
def test_accuracy_does_not_depend_on_the_order_of_the_candidates(N):
    """Every permutation of each comparison's candidates (the label moved with them) gives the
    same accuracy, and it equals the brute-force mean of the first-argmax count over all N!
    orders (a uniformly random tie-break's expected accuracy)."""
    g = torch.Generator().manual_seed(N)
    rewards = torch.randint(0, 3, (64, N), generator=g).float()  # 3 values: many ties
    rewards[:4] = 1.0  # and some constant rows
    best = torch.randint(0, N, (64,), generator=g)
    got = reward.preference_accuracy(rewards, best).item()
    orders = list(itertools.permutations(range(N)))
    seen, brute = set(), []
    for order in orders:
        perm = torch.tensor(order)
        moved, new_best = rewards[:, perm], torch.argsort(perm)[best]  # the label moves along
        assert torch.equal(moved.gather(1, new_best[:, None]), rewards.gather(1, best[:, None]))
        seen.add(round(reward.preference_accuracy(moved, new_best).item(), 6))
        brute.append(first_argmax_accuracy(moved, new_best))
    assert seen == {round(got, 6)}
    assert got == pytest.approx(sum(brute) / len(orders), abs=1e-6)
    assert len({round(b, 6) for b in brute}) > 1  # the old count did depend on the order


def test_held_out_accuracy_of_a_constant_model_is_chance():
    """reward.evaluate (held-out and `reward.py eval` accuracy): a model that gives every
    response the same reward (a zero head) scores 1/N, whatever candidate the labels name."""
    rm = tiny_random_rm()
    with torch.no_grad():
        rm.head.weight.zero_()
    samples = ((383, 13), (464, 13), (11, 13), (3797, 13))
    rows = [label_row(i, best=0, samples=samples) for i in range(6)]
    assert reward.evaluate(rm, rows)["accuracy"] == 0.25
    rows = [label_row(i, best=i % 4, samples=samples) for i in range(6)]
    assert reward.evaluate(rm, rows)["accuracy"] == 0.25


def test_adam_tf_first_step_by_hand():
    # step 1: m = (1-b1) g, v = (1-b2) g^2, lr_t = lr sqrt(1-b2)/(1-b1) -> update = lr g / (|g| +
    # eps/sqrt(1-b2))
    lr, eps, g = 0.1, 1e-2, torch.tensor([0.5, -2e-3])
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = g.clone()
    AdamTF([p], lr=lr, eps=eps).step()
    expected = -lr * g / (g.abs() + eps / math.sqrt(1 - 0.999))
    torch.testing.assert_close(p.detach(), expected)
    # PyTorch's Adam matches at step 1 only with eps scaled by 1/sqrt(1 - b2): the two placements
    # differ
    q = torch.nn.Parameter(torch.zeros(2))
    q.grad = g.clone()
    torch.optim.Adam([q], lr=lr, eps=eps / math.sqrt(1 - 0.999)).step()
    torch.testing.assert_close(q.detach(), expected)


def test_head_init_and_normalization_mean0_std1():
    rm = tiny_random_rm()
    C = rm.lm.config.n_embd
    assert rm.head.bias.abs().max() == 0
    assert rm.head.weight.std().item() == pytest.approx(1 / math.sqrt(C + 1), rel=0.2)
    src = tasks.QuerySource("sentiment")
    qs = src.next_batch(40, formatted=False)
    rs = [q[:10] for q in src.next_batch(40, formatted=False)]
    raw = reward.score_tokens(rm, qs, rs)
    mean, std = reward.population_mean_std(raw)
    rm.set_normalization(mean, std)
    r = reward.score_tokens(rm, qs, rs).double()
    assert abs(r.mean().item()) < 1e-5
    assert r.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)  # population std, as TF
    assert r.std(unbiased=True).item() == pytest.approx(math.sqrt(40 / 39), abs=1e-5)
    assert reward.gain_bias(3.0, 2.0, 1.0, 4.0) == (2.0, 1.0 - 2.0 * 3.0)
    with pytest.raises(RuntimeError, match="reset_normalization"):
        rm.set_normalization(mean, std)  # must reset gain/bias first, as OpenAI's assert
    rm.reset_normalization()
    with pytest.raises(ValueError, match="std 0"):
        rm.set_normalization(1.0, 0.0)


def test_normalize_under_rho_sets_gain_and_bias():
    rm, policy = tiny_random_rm(), tiny_random_rm(1).lm
    cfg = reward.TrainConfig(normalize_samples=8, rollout_batch_size=8)
    stats = reward.normalize(rm, policy, tasks.get_task("sentiment"), cfg, seed=0)
    assert stats["gain"] == pytest.approx(1 / stats["std"]) and stats["bias"] == pytest.approx(
        -stats["mean"] / stats["std"]
    )
    assert rm.reward_gain.item() == pytest.approx(stats["gain"])
    # fresh samples: near, not exactly, N(0, 1)
    assert abs(stats["after_mean"]) < 3 and 0.2 < stats["after_std"] < 5


def test_reward_read_at_last_real_token():
    rm = tiny_random_rm()
    q, r = [464, 3290, 373, 922, 13], [383, 3797, 13]
    alone = rm(torch.tensor([q + r]), torch.ones(1, 8, dtype=torch.bool))
    # left padding inside a batch with a longer row
    tokens, mask = left_pad([q + r, q + r + [11] * 6])
    padded = rm(tokens, mask)[0]
    # OpenAI's layout: query right-padded to 9 (pads in the middle), response padded with PAD_ID
    # after its stop token
    query = torch.tensor([q + [PAD_ID] * 4])
    response = torch.tensor([r + [PAD_ID] * 3])
    middle = rm.score(query, query != PAD_ID, response)
    torch.testing.assert_close(padded, alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(middle, alone, atol=1e-5, rtol=1e-5)
    # and it is the LAST real token that is read: changing it changes the reward
    changed = rm(torch.tensor([q + r[:-1] + [0]]), torch.ones(1, 8, dtype=torch.bool))
    assert (changed - alone).abs().item() > 1e-4


def write_lines(path, objs):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return str(path)


def label_row(i, best=0, samples=((383, 13), (464, 13)), query=(464, 3290, 13)):
    return dict(
        id=f"x{i}",
        task="sentiment",
        query="q",
        query_tokens=list(query),
        samples=["a"] * len(samples),
        sample_tokens=[list(s) for s in samples],
        best=best,
        labeler="t",
        seconds=1.0,
        created="2024",
    )


@pytest.mark.parametrize(
    "name,lines,message",
    [
        ("malformed", [label_row(0), '{"id": "x1", "task": '], r"bad\.jsonl:2"),
        ("best", [label_row(0), label_row(1, best=2)], r"bad\.jsonl:2.*best"),
        ("vocab", [label_row(0, samples=((383, 50257), (464, 13)))], r"bad\.jsonl:1.*50257"),
        (
            "n",
            [label_row(0), label_row(1, samples=((1,), (2,), (3,)))],
            r"bad\.jsonl:2.*3 candidates",
        ),
        ("empty", [], r"bad\.jsonl.*empty"),
    ],
)
def test_bad_labels_give_clear_errors(tmp_path, capsys, name, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    assert (
        reward.main(
            ["train", "--labels", path, "--model", "tiny", "--out", str(tmp_path / "rm.pt")]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and __import__("re").search(message, err), err
    assert not (tmp_path / "rm.pt").exists()


def test_labels_of_another_task_are_refused(tmp_path, capsys, monkeypatch):
    """Descriptiveness labels given to a sentiment reward model: refused by reward.py train
    --task, reward.py eval (the reward model's task) and ppo.py --rm.labels, naming both tasks,
    before anything trains; labels without a task field (OpenAI's JSON) are taken as given."""
    import ppo

    rows = [dict(label_row(i), task="descriptiveness") for i in range(4)]
    path = write_lines(tmp_path / "desc.jsonl", rows)
    out = tmp_path / "rm.pt"
    argv = ["train", "--labels", path, "--task", "sentiment", "--model", "tiny", "--out", str(out)]
    assert reward.main(argv) == 1
    err = capsys.readouterr().err
    assert "4 of 4 labels are of task descriptiveness, not sentiment" in err and not out.exists()
    rm = tiny_random_rm()
    rm.meta["task"] = "sentiment"
    with pytest.raises(ValueError, match="of task descriptiveness, not sentiment"):
        comparisons.check_rows_fit(
            comparisons.read_label_rows(path), rm.lm.config, path, "sentiment"
        )
    untagged = [{k: v for k, v in r.items() if k != "task"} for r in rows]
    assert comparisons.resolve_task(untagged, "sentiment").name == "sentiment"
    reward.save_reward_model(rm, out)
    assert reward.main(["eval", "--labels", path, "--reward-model", str(out)]) == 1
    assert "not sentiment" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="of task descriptiveness, not sentiment"):
        ppo.main(["--model", "tiny", "--rm.labels", path, "--run-dir", str(tmp_path / "run")])


def test_skipped_labels_are_counted(tmp_path, capsys):
    path = write_lines(
        tmp_path / "l.jsonl", [label_row(0), label_row(1), {"id": "x1", "undo": True}]
    )
    rows = comparisons.read_label_rows(path)
    assert len(rows) == 1
    assert "1 labels from 3 lines; 1 undone" in capsys.readouterr().out


def test_openai_json_is_accepted(tmp_path):
    d = tmp_path / "labels" / "sentiment"
    d.mkdir(parents=True)
    P = PAD_ID
    data = [
        {
            "query": [464, 3290, 13, P, P],
            "sample0": [383, 13, P],
            "sample1": [464, 11, 13],
            "best": 1,
        }
    ]
    (d / "offline_5k.json").write_text(json.dumps(data))
    rows = comparisons.read_label_rows(str(d / "offline_5k.json"))
    assert comparisons.resolve_task(rows, "").name == "sentiment"
    assert rows[0]["query_tokens"] == [464, 3290, 13] and rows[0]["sample_tokens"][0] == [383, 13]


def test_load_reward_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward.py train"):
        reward.load_reward_model(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a reward model checkpoint"):
        reward.load_reward_model(tmp_path / "text.pt")
    torch.save({"model": {}, "config": {}}, tmp_path / "policy.pt")
    with pytest.raises(ValueError, match="policy.pt is a PyTorch file, not a reward model"):
        reward.load_reward_model(tmp_path / "policy.pt")
    rm = tiny_random_rm()
    rm.meta.update(task="sentiment", seed=3)
    reward.save_reward_model(rm, tmp_path / "rm.pt")
    with pytest.raises(
        ValueError, match="n_embd.*768.*train a reward model from the policy's base model"
    ):
        reward.load_reward_model(tmp_path / "rm.pt", expect_config=PRESETS["gpt2"])
    with pytest.raises(ValueError, match="vocab_size"):
        reward.load_reward_model(
            tmp_path / "rm.pt", expect_config=dataclasses.replace(PRESETS["tiny"], vocab_size=50000)
        )
    back = reward.load_reward_model(tmp_path / "rm.pt", expect_config=PRESETS["tiny"])
    assert back.meta["task"] == "sentiment" and back.meta["seed"] == 3
    tokens, mask = left_pad([[464, 3290, 13], [383, 13]])
    torch.testing.assert_close(back(tokens, mask), rm(tokens, mask))


def test_end_to_end_tiny_sample_label_train_eval(tmp_path, capsys):
    """sample -> scripted label -> train -> eval on the tiny model, through the command line.

    descriptiveness: its lexicon words (colours, textures, sounds) are frequent in the tiny
    model's samples, so 150 labels seen 4 times are enough for a clear signal (measured on this
    seed: held-out accuracy 0.76, chance 0.25; one epoch at a higher lr gave 0.46 to 0.66
    depending on the machine that fitted the tiny model, too close to call)."""
    cmp_path, lab_path, rm_path = tmp_path / "c.jsonl", tmp_path / "l.jsonl", tmp_path / "rm.pt"
    assert (
        reward.main(
            [
                "sample",
                "--task",
                "descriptiveness",
                "--model",
                "tiny",
                "--num-comparisons",
                "200",
                "--out",
                str(cmp_path),
                "--batch-size",
                "512",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in cmp_path.read_text().splitlines()]
    assert len(rows) == 200 and all(len(r["sample_tokens"]) == 4 for r in rows)
    # rejection sampling: every candidate shown ends at its period, found at index >= truncate_after
    assert all(
        s[-1] == 13 and 13 in s[16:] and len(s) <= 24 for r in rows for s in r["sample_tokens"]
    )
    assert (
        reward.main(
            [
                "label",
                "--labeler",
                "descriptiveness",
                "--comparisons",
                str(cmp_path),
                "--out",
                str(lab_path),
            ]
        )
        == 0
    )
    assert (
        reward.main(
            [
                "train",
                "--labels",
                str(lab_path),
                "--model",
                "tiny",
                "--out",
                str(rm_path),
                "--lr",
                "3e-4",
                "--epochs",
                "4",
                "--batch-size",
                "8",
                "--test-fraction",
                "0.25",
                "--normalize-samples",
                "32",
                "--rollout-batch-size",
                "32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "held-out accuracy" in out
    rm = reward.load_reward_model(rm_path, expect_config=PRESETS["tiny"])
    m = rm.meta["metrics"]
    assert m["num_train"] == 150 and m["num_test"] == 50
    # clearly above chance (0.25), and better than the random head in likelihood, which accuracy
    # alone can hide (a random head can already rank some sensory words high by luck)
    assert m["test"]["accuracy"] >= 0.5, m
    assert m["test"]["loss"] < min(m["test_before"]["loss"], math.log(4)) - 0.05, m
    assert abs(m["norm_after"]["after_mean"]) < 0.7 and 0.5 < m["norm_after"]["after_std"] < 2
    assert (
        rm.meta["task"] == "descriptiveness"
        and rm.meta["base_model"] == "tiny"
        and rm.meta["seed"] == 1
    )
    # `reward.py train` samples rho (normalization) at the task's temperature, and says so
    assert rm.meta["temperature"] == rm.meta["train_config"]["temperature"] == 0.7
    # a scripted label keeps the indices of equal top score where it broke a tie
    lab = tasks.get_labeler("descriptiveness")
    labeled = [json.loads(line) for line in lab_path.read_text().splitlines()]
    for r in labeled:
        score = lab.score(r["samples"])
        assert r.get("tied", [r["best"]]) == [i for i, x in enumerate(score) if x == score.max()]
    assert any("tied" in r for r in labeled)  # 20 of the 200 on this seed
    # eval on the held-out rows agrees with training's own measurement
    test_path = write_lines(tmp_path / "test.jsonl", lab_path.read_text().splitlines()[150:])
    assert (
        reward.main(
            ["eval", "--reward-model", str(rm_path), "--labels", test_path, "--device", "cpu"]
        )
        == 0
    )
    assert f"accuracy {m['test']['accuracy']:.3f}" in capsys.readouterr().out


def test_training_moves_every_weight_even_from_a_frozen_policy():
    torch.manual_seed(0)
    # as ppo.py passes rho
    policy = GPT2.from_config(dataclasses.replace(PRESETS["tiny"])).requires_grad_(False)
    before = policy.transformer.h[0].mlp.c_fc.weight.clone()
    rows = [label_row(i, best=i % 2) for i in range(4)]
    cfg = reward.TrainConfig(
        labels="<rows>",
        batch_size=2,
        lr=1e-3,
        normalize_before=False,
        normalize_after=False,
    )
    rm, m = reward.train_reward_model(rows, cfg, "tiny", "sentiment", policy=policy, test_rows=[])
    assert m["num_train"] == 4 and m["num_test"] == 0
    # the RM's own copy trained
    assert not torch.equal(rm.lm.transformer.h[0].mlp.c_fc.weight, before)
    assert torch.equal(policy.transformer.h[0].mlp.c_fc.weight, before)  # rho untouched
    assert rm.meta["task"] == "sentiment" and rm.meta["seed"] == 1


def test_epochs_see_each_label_once_per_epoch_and_anneal_lr_over_all_of_them(monkeypatch):
    """--epochs 3 (the tiny demo's setting): a fresh permutation per epoch, lr linear to 0 over
    all 3 epochs."""
    torch.manual_seed(0)
    policy = GPT2.from_config(dataclasses.replace(PRESETS["tiny"]))
    rows = [label_row(i, best=i % 2) for i in range(6)]
    seen, lrs = [], []
    real = reward.comparison_rewards

    def recording(rm, batch, device="cpu"):
        seen.extend(r["id"] for r in batch)
        return real(rm, batch, device)

    class RecordingAdam(AdamTF):
        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(reward, "comparison_rewards", recording)
    monkeypatch.setattr(optim, "AdamTF", RecordingAdam)
    cfg = reward.TrainConfig(
        labels="<rows>",
        batch_size=2,
        lr=1e-3,
        epochs=3,
        normalize_before=False,
        normalize_after=False,
    )
    reward.train_reward_model(rows, cfg, "tiny", "sentiment", policy=policy, test_rows=[])
    ids = sorted(r["id"] for r in rows)
    assert len(seen) == 18 and all(sorted(seen[e * 6 : (e + 1) * 6]) == ids for e in range(3))
    assert seen[:6] != seen[6:12] or seen[6:12] != seen[12:]  # reshuffled, not one order repeated
    # 9 steps, from 1e-3 toward 0
    assert lrs == pytest.approx([1e-3 * (1 - 2 * k / 18) for k in range(9)])


# --------------------------------------------------------------------------------------------------
# One run, one sampling temperature


def record_sampling(monkeypatch) -> list[tuple[str, float]]:
    """(callers, temperature) of every gpt2.generate call from now on, the callers as
    "module.function < module.function" (the two functions above generate, torch's decorators
    left out). Patched under every name it has: `from gpt2 import generate` binds a module's own.
    Also used by test_online.py."""
    import evaluate  # noqa: F401  (every module a run samples from, imported before patching)
    import gpt2
    import ppo  # noqa: F401

    real, calls = gpt2.generate, []
    signature = inspect.signature(real)

    def recording(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        frame, names = sys._getframe(1), []
        while frame is not None and len(names) < 2:
            if not frame.f_globals["__name__"].startswith("torch"):
                names.append(f"{frame.f_globals['__name__']}.{frame.f_code.co_qualname}")
            frame = frame.f_back
        calls.append((" < ".join(names), bound.arguments["temperature"]))
        return real(*args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "generate", None) is real:
            monkeypatch.setattr(module, "generate", recording)
    return calls


def test_a_ppo_run_samples_everything_at_its_temperature(tmp_path, monkeypatch):
    """ppo.py --temperature 0.9 (sentiment's is 0.7) without --reward-model: the comparisons and the
    normalization samples of the reward model it builds are drawn at 0.9, as its rollouts and its
    end-of-run evaluation, and rm.pt records it."""
    import ppo

    calls = record_sampling(monkeypatch)
    run_dir = tmp_path / "run"
    ppo.main(
        ["--model", "tiny", "--temperature", "0.9", "--rm.num-comparisons", "8",
         "--rm.epochs", "1", "--rm.normalize-samples", "8", "--rm.rollout-batch-size", "8",
         "--total-episodes", "8", "--batch-size", "8", "--micro-batch-size", "8",
         "--eval-episodes", "8", "--sample-every", "0", "--run-dir", str(run_dir)]
    )  # fmt: skip
    callers = {c for c, _ in calls}
    assert {
        "machinery.comparisons.sample_responses < machinery.comparisons.sample_comparisons",
        "machinery.comparisons.sample_responses < reward.normalize.<locals>.draw",
        "ppo.rollout < ppo.train",  # the rollouts
        "ppo.rollout < machinery.runs.evaluate_policy",  # the held-out scores before and after
        "evaluate.sample_side < evaluate.judge",  # the end-of-run win rate against rho
    } <= callers, callers
    assert {t for _, t in calls} == {0.9}, sorted(set(calls))
    rm = torch.load(run_dir / "rm.pt", weights_only=True)
    assert rm["temperature"] == rm["train_config"]["temperature"] == 0.9
    assert json.loads((run_dir / "config.json").read_text())["temperature"] == 0.9


def test_default_temperature_samples_as_before():
    """Without --temperature a run's temperature is its task's, and the task it samples with
    (comparisons.task_at) equals the task itself: the same settings, so the same draws."""
    import ppo
    from machinery import presets

    for name in tasks.TASKS:
        cfg = presets.resolve_config(ppo.Config, {"task": name})
        assert comparisons.task_at(name, cfg.temperature) == tasks.get_task(name)
    assert comparisons.task_at("cnndm", 0.9).temperature == 0.9  # and the check can fail
    assert comparisons.task_at("cnndm", 0.9) != tasks.get_task("cnndm")
