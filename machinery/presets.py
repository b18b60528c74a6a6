"""ppo.py's presets and the one place its configuration is decided (lm-human-preferences keeps its
per-task settings in launch.py, outside the trainer; so do we).

The layers, later wins (PRECEDENCE, shown at the end of `ppo.py --help`):
  1. the defaults in ppo.Config; 2. the task's (TASK_DEFAULTS, and its sampling temperature);
  3. the tiny preset (TINY_DEFAULTS) with --model tiny; 4. a resumed run's config.json;
  5. the flags given on the command line.

Also here: the allowed values of every numeric option of ppo.py and reward.py (RANGES, CHOICES),
which check_values refuses before anything loads, and parse, reward.py's cli.parse with that check.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from machinery import cli, labels, tasks

# Per-task defaults from the released launch.py, as dotted flag names ("rm.lr" is --rm.lr)
TASK_DEFAULTS = {
    "sentiment": {},
    "descriptiveness": {},
    # launch.py binds `rewards.whiten` = False, a key that does not exist; we do what it intends.
    "cnndm": dict(
        lr=2e-6,
        batch_size=32,
        kl_coef=0.01,
        adaptive_kl=False,
        whiten_rewards=False,
        micro_batch_size=16,
    ),
    "tldr": dict(
        lr=2e-6,
        batch_size=32,
        kl_coef=0.03,
        adaptive_kl=False,
        whiten_rewards=False,
        micro_batch_size=16,
    ),
}
# `--model tiny`: CPU-sized budgets picked so that the demo learns within 10 minutes on 2 cores.
TINY_DEFAULTS = {
    # 60 updates of 32 episodes, 2 minibatches of 16 (8 Adam steps per update): about 5 minutes of
    # PPO on 2 cores. The tiny model is 2 layers fitted on 600 passages, so it takes a larger step
    # (lr) than GPT-2, and a shorter horizon lets the controller react within 60 updates (β0 = 0.15
    # and the 6-nat target stay as released).
    "total_episodes": 32 * 60,
    "batch_size": 32,
    "nminibatches": 2,
    "micro_batch_size": 16,
    "lr": 2e-4,
    "kl_horizon": 300,
    # 800 scripted comparisons (~1 minute to sample): one epoch of them leaves the tiny reward model
    # near chance, eight at a lower lr reach ~50% held-out best-of-4 accuracy (chance 25%), enough
    # for PPO to raise the true score.
    "rm.num_comparisons": 800,
    "rm.lr": 3e-4,
    "rm.batch_size": 8,
    "rm.epochs": 8,
    "rm.normalize_samples": 128,
    "eval_episodes": 128,
    "sample_every": 10,
    "save_every": 10,
    # --online: the same 800-label budget as the offline demo, 320 of them before RL, and 5
    # trainings (20 trainings of 8 epochs would take longer than the whole offline demo)
    "labels_total": 800,
    "labels_initial": 320,
    "rm_trainings": 5,
}

PRECEDENCE = """\
where each option's value comes from (later wins), decided by machinery/presets.py::resolve_config:
  1. the defaults listed above
  2. the task's defaults (and its sampling temperature, machinery/tasks.py)
  3. the tiny preset, with --model tiny
  4. with --resume DIR: that run's config.json (without its --stop-after)
  5. the flags given on this command line"""

# The values every numeric option of ppo.py (ppo.Config, with --rm.*) and reward.py (its commands'
# argument dataclasses) may take, by field name: a name means the same wherever it is used.
# (low, high, brackets): "[" a closed bound, "(" an open one, ")" with high: below high. A value
# outside is refused by check_values, before anything loads. tests/test_cli.py checks that every
# int and float field of those configs is here.
AT_LEAST_0, AT_LEAST_1, POSITIVE = (0, math.inf, "["), (1, math.inf, "["), (0, math.inf, "(")
UNIT = (0, 1, "[]")  # a probability, a discount
RANGES = {
    # ppo.Config (and online.Options, runs.RunOptions, optim.AdamOptions)
    "total_episodes": AT_LEAST_1, "batch_size": AT_LEAST_1, "nminibatches": AT_LEAST_1,
    "noptepochs": AT_LEAST_1, "micro_batch_size": AT_LEAST_1, "lr": POSITIVE,
    "adam_eps": POSITIVE, "kl_coef": AT_LEAST_0, "kl_target": POSITIVE, "kl_horizon": AT_LEAST_1,
    "gamma": UNIT, "lam": UNIT, "cliprange": POSITIVE, "cliprange_value": POSITIVE,
    "vf_coef": AT_LEAST_0, "temperature": POSITIVE, "labels_total": AT_LEAST_1,
    "labels_initial": AT_LEAST_1, "rm_trainings": AT_LEAST_1, "validation_every": AT_LEAST_0,
    "max_label_lag": AT_LEAST_0, "seed": (0, 2**31 - 1, "[]"), "stop_after": AT_LEAST_0,
    "save_every": AT_LEAST_1, "sample_every": AT_LEAST_0, "eval_episodes": AT_LEAST_1,
    "bench_updates": AT_LEAST_1,
    # reward.TrainConfig (ppo.py's --rm.*), and `reward.py sample` / `eval`
    "num_comparisons": AT_LEAST_1, "num_train": AT_LEAST_0, "test_fraction": (0, 1, "[)"),
    "epochs": AT_LEAST_1, "normalize_samples": (2, math.inf, "["), "rollout_batch_size": AT_LEAST_1,
    "eval_batch_size": AT_LEAST_1, "log_interval": AT_LEAST_1,
    "n_samples": (2, labels.MAX_CANDIDATES, "[]"), "max_rounds": AT_LEAST_1,
    # evaluate.py
    "n": AT_LEAST_1, "show": AT_LEAST_0,
}  # fmt: skip
# The words some fields take: instead of a number, or as their only values
CHOICES = dict(micro_batch_size=("auto",), value_model=("shared", "reward"), adam=("tf", "torch"))


def allowed(name: str, integer: bool) -> str:
    """RANGES[name] in words: "an integer >= 1", "a number in [0, 1)", "'auto' or an integer
    >= 1"."""
    low, high, brackets = RANGES[name]
    kind = "an integer" if integer else "a number"
    if high == math.inf:
        text = f"{kind} {'>' if brackets[0] == '(' else '>='} {low}"
    elif integer:
        text = f"{kind} in {low}..{high}"
    else:
        text = f"{kind} in {brackets[0]}{low}, {high}{brackets[-1]}"
    words = " or ".join(repr(w) for w in CHOICES.get(name, ()))
    return f"{words} or {text}" if words else text


def check_values(config, flat: tuple[str, ...] = (), prefix: str = "", source=None) -> None:
    """Refuse (cli.UsageError, one line naming the flag, the value and what is allowed) a value of
    the dataclass `config` outside RANGES / CHOICES; nested dataclasses too, their flags under
    `<name>.` unless in `flat` (as cli.add_dataclass_args names them). source(key): where a value
    that no flag gave comes from (a resumed run's config.json), or None."""
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_values(value, flat, prefix if f.name in flat else key + ".", source)
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if (f.name not in RANGES or not numeric) and f.name not in CHOICES:
            continue
        integer = isinstance(default, int)
        if value in CHOICES.get(f.name, ()) or (numeric and _within(value, integer, f.name)):
            continue
        flag = "--" + key.replace("_", "-")
        what = allowed(f.name, integer) if numeric else " or ".join(map(repr, CHOICES[f.name]))
        where = source(key) if source else None
        where = f" (from {where})" if where else ""
        again = f"; give {flag} to replace it" if where else ""
        raise cli.UsageError(f"{flag} {value!r}{where}: must be {what}{again}")


def _within(value, integer: bool, name: str) -> bool:
    """Is value of the field's type (an int for an int field; a finite number for a float one) and
    inside RANGES[name]? (NaN is inside no range.)"""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    low, high, brackets = RANGES[name]
    above = value > low if brackets[0] == "(" else value >= low
    below = value < high if brackets[-1] == ")" else value <= high
    return above and below and math.isfinite(value)


def parse(cls, argv: list[str] | None = None, **kwargs):
    """cli.parse, then check_values: reward.py's commands' and evaluate.py's arguments, refused
    before any work."""
    args = cli.parse(cls, argv, **kwargs)
    check_values(args, kwargs.get("flat", ()))
    return args


def resolve_config(cls, given: dict, saved: dict | None = None):
    """The `cls` (ppo.Config) a run uses. given: the flags on the command line; saved: a resumed
    run's config.json; both keyed like the parser ("rm.lr"), saved may be nested. Derived fields
    (name, run_dir) are filled in here. An unknown task or key is a SystemExit that names it."""
    saved = cli.flatten(saved or {})
    if saved:
        saved["stop_after"] = 0  # a resumed run goes to the end unless told otherwise now
    elif given.get("reward_model"):  # a new run on a given reward model: its --model and --task
        given = {**reward_model_origin(given["reward_model"], given), **given}
    chosen = {**saved, **given}  # the task and model the layers below depend on
    task_name = chosen.get("task", cls.task)
    if task_name not in TASK_DEFAULTS:
        raise SystemExit(f"error: unknown --task {task_name!r}; tasks: {', '.join(TASK_DEFAULTS)}")
    values = cli.flatten(asdict(cls()))  # 1
    values["temperature"] = tasks.get_task(task_name).temperature  # 2
    values.update(TASK_DEFAULTS[task_name])
    if chosen.get("model", cls.model) == "tiny":  # 3
        values.update(TINY_DEFAULTS)
    values.update(saved)  # 4
    values.update(given)  # 5
    try:
        cfg = cli.from_flat(cls, values, "config.json" if saved else "flags")
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    resumed = Path(cfg.resume) / "config.json"  # a value no flag gave comes from there
    check_values(cfg, source=lambda key: resumed if key in saved and key not in given else None)
    if cfg.rm.labels and not saved:  # a reward model or a run folder given as labels: say so now
        labels.check_kind(cfg.rm.labels, labels.LABELS)
    if cfg.online and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # [dist] before any rank joins
        raise cli.UsageError(  # rank 0 alone says it (cli.run_main): one line, not one per rank
            "--online runs in one process (its queue and labels have one writer); start it "
            f"without torchrun: {cli.rerun('ppo.py', None, '')}"
        )
    if cfg.resume:  # a resumed run stays in its folder
        cfg.run_dir = cfg.resume
    # Input files as absolute paths in config.json, so evaluate.py and --resume find them from any
    # directory (a model name such as gpt2 is not a path and stays as given)
    inputs = [(cfg, "model"), (cfg, "reward_model"), (cfg, "query_data"), (cfg.rm, "labels")]
    for obj, key in inputs:
        path = getattr(obj, key)
        if path and Path(path).exists():
            setattr(obj, key, str(Path(path).resolve()))
    cfg.name = cfg.name or f"{cfg.task}-{Path(cfg.model).name}-s{cfg.seed}"
    cfg.run_dir = cfg.run_dir or str(Path("runs") / cfg.name)
    return cfg


def reward_model_origin(path: str, given: dict) -> dict:
    """The --model and --task a reward model was trained from (rm.pt's base_model and task), for a
    run given --reward-model without them: `reward.py train --model tiny` then `ppo.py
    --reward-model rm.pt` is a tiny run. A file that is no reward model (none there, a ppo.py
    checkpoint, labels, ...) is refused here, before anything loads, with what it is and what to
    give instead (labels.wrong_file); one that cannot be read, by the run's own load."""
    if labels.file_kind(path) != labels.REWARD_MODEL:
        raise SystemExit(f"error: --reward-model {labels.wrong_file(path, labels.REWARD_MODEL)}")
    try:  # mmap: only the small metadata is read, not the weights
        meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        origin = dict(model=meta["base_model"], task=meta["task"])
    except Exception:
        return {}
    origin = {k: v for k, v in origin.items() if k not in given and isinstance(v, str) and v}
    if origin:
        print(f"{path}: " + ", ".join(f"--{k} {v}" for k, v in origin.items()) + " (its training)")
    return origin


def tiny_reward_options(a, argv: list[str]) -> None:
    """`reward.py train --model tiny` (a: reward.TrainArgs; argv: its flags): the tiny preset's
    reward-model options (TINY_DEFAULTS' rm.*) go into a.train where the command line gives none,
    so that a stage-by-stage run on a CPU trains its reward model as the CPU demo does (GPT-2's
    defaults leave tiny's near chance). Other models: nothing changes."""
    if a.model != "tiny":
        return
    given = {arg.split("=")[0] for arg in argv if arg.startswith("--")}
    preset = {k[3:]: v for k, v in TINY_DEFAULTS.items() if k.startswith("rm.")}
    preset = {k: v for k, v in preset.items() if "--" + k.replace("_", "-") not in given}
    print("--model tiny: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in preset.items()))
    a.train = dataclasses.replace(a.train, **preset)


def as_flags(values: dict) -> str:
    """{"rm.lr": 3e-4, "adaptive_kl": False} -> "--rm.lr 0.0003 --no-adaptive-kl" (for --help)."""
    flag = lambda k: "--" + k.replace("_", "-")
    return " ".join(
        (flag(k) if v else flag("no_" + k)) if isinstance(v, bool) else f"{flag(k)} {v}"
        for k, v in values.items()
    )


def parse_args(cls, description: str, argv=None):
    """--help from the dataclass `cls`; only the flags actually given reach resolve_config."""
    parser = cli.make_parser(
        cls,
        description=description,
        epilog=PRECEDENCE
        + "\n\nper-task defaults:\n"
        + "\n".join(f"  --task {k}: {as_flags(v)}" for k, v in TASK_DEFAULTS.items() if v)
        + f"\n  --model tiny: {as_flags(TINY_DEFAULTS)}",
        only_given=True,
        order=("task", "lr", "rm", "online", "seed", "device"),  # --help's groups: what, how, where
    )
    given = vars(parser.parse_args(argv))
    saved = None
    if given.get("resume"):
        saved_path = Path(given["resume"]) / "config.json"
        folder, kind = Path(given["resume"]), labels.file_kind(given["resume"])
        if kind == labels.PPO_CHECKPOINT and (folder.parent / "config.json").is_file():
            raise SystemExit(f"error: --resume takes the run's folder: --resume {folder.parent}")
        if kind == labels.MISSING:
            raise SystemExit(f"error: --resume {folder}: no such run folder")
        if kind not in (labels.RUN_FOLDER, labels.FOLDER):
            raise SystemExit(f"error: --resume {folder} is {kind}, not a ppo.py run folder")
        if not saved_path.exists():
            raise SystemExit(
                f"error: --resume {folder}: no config.json there (is it a ppo.py run folder?)"
            )
        saved = json.loads(saved_path.read_text())
    return resolve_config(cls, given, saved)
