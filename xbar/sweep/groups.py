"""Stacked sweeps: the runs of a sweep that differ only in device-side settings, grouped to train
as one stack in one task (:func:`xbar.train.many.train_many`), and the time a group takes.

``--stack auto`` (the default) groups every run that can stack with the runs that share all its
other settings (network, rule, seed, data order, recipe, ...); ``--stack off`` runs each alone. A
run that cannot stack (its rule, update or device; :func:`xbar.train.stackable.stack_blocker`) runs
alone, and ``--dry-run`` says why. A group whose runs are partly stored trains only the missing
ones (the stored ones are not in the to-do list it is built from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, XbarError
from .spec import Run
from .worker import estimate_seconds

STACK_MODES = ("auto", "off")
# Above this many variants a group is cut in pieces (memory, and the last minutes of a sweep stay busy).
MAX_STACK = 64


@dataclass
class Group:
    """Runs trained together (one run: alone); `why` says why a lone run is alone."""

    runs: list[Run]
    why: str = ""
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def stacked(self) -> bool:
        return len(self.runs) > 1


def check_stack(mode: str) -> str:
    if mode not in STACK_MODES:
        raise ConfigError(f"--stack {mode!r}: expected one of {', '.join(STACK_MODES)}")
    return mode


def plan_groups(runs: list[Run], mode: str = "auto", workers: int = 1) -> list[Group]:
    """The runs as groups, in first-run order: stacks under mode "auto", each run alone under "off".

    A stack trains on one worker: while there are fewer groups than `workers`, the largest stack
    is cut in two (idle workers cost more than a smaller stack saves; every run trains the same
    bits in any stack)."""
    check_stack(mode)
    if mode == "off":
        return [Group([r], "--stack off") for r in runs]
    from ..train.config import TrainConfig
    from ..train.stackable import DEVICE_SIDE, group_key, stack_blocker
    groups: dict[tuple, Group] = {}
    out: list[Group] = []
    for r in runs:
        if r.config.get("command", "train") != "train":
            out.append(Group([r], "pruning runs do not stack"))
            continue
        try:
            cfg = TrainConfig.from_dict({k: v for k, v in r.config.items() if k != "command"}).resolve()
        except XbarError as exc:
            out.append(Group([r], f"config: {exc}"))
            continue
        why = stack_blocker(cfg)
        if why:
            out.append(Group([r], why))
            continue
        key = group_key(cfg)
        g = groups.get(key)
        if g is None or len(g.runs) >= MAX_STACK:
            g = groups[key] = Group([], "", {k: v for k, v in r.config.items() if k not in DEVICE_SIDE})
            out.append(g)
        g.runs.append(r)
    while len(out) < workers:
        i = max(range(len(out)), key=lambda k: len(out[k].runs), default=None)
        if i is None or len(out[i].runs) < 2:
            break
        g, h = out[i], (len(out[i].runs) + 1) // 2
        why = g.why or "cut from a stack to keep every worker busy"
        out[i:i + 1] = [Group(g.runs[:h], why, g.shared), Group(g.runs[h:], why, g.shared)]
    for g in out:
        if len(g.runs) == 1 and not g.why:
            g.why = "no other run shares its network, rule, seed and training settings"
    return out


def split_fields(runs: list[Run]) -> list[str]:
    """The non-device-side config fields whose values differ across `runs` (what splits groups)."""
    from ..train.stackable import DEVICE_SIDE
    keys = sorted({k for r in runs for k in r.config} - set(DEVICE_SIDE))
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


# Measured on the 2-core dev machine (README, "Stacked sweeps"): a stack's step costs its shared
# Python part once and each variant's arithmetic, so a group of K costs about one run's overhead
# plus K times its compute. STACK_SHARE is the overhead share a run alone spends per variant.
STACK_SHARE = 0.15


# Variants on their own crossbars (update qat, or devices the stack's kernels do not model) still
# program and read each on its own: 20 qat variants on rram-4bit measured 1.14-1.25x.
OWN_SPEEDUP = 1.15


def own_crossbars(config: dict) -> bool:
    """Whether a stacked run will likely program and read its own crossbars (xbar.train.stackown):
    update qat, or any device but the exact "ideal" preset unchanged."""
    update = config.get("update")
    return update == "qat" or (update == "nearest" and (config.get("device") != "ideal" or bool(config.get("device_set"))))


def estimate_group_seconds(group: Group) -> float:
    """Rough single-core seconds for a group (alone: estimate_seconds)."""
    ests = [estimate_seconds(r.config) for r in group.runs]
    if len(ests) == 1:
        return ests[0]
    if any(own_crossbars(r.config) for r in group.runs):
        return sum(ests) / OWN_SPEEDUP
    from .worker import compute_share
    comp = [compute_share(r.config) for r in group.runs]
    shared = max(e - c for e, c in zip(ests, comp))
    return sum(comp) + shared + STACK_SHARE * shared * (len(ests) - 1)
