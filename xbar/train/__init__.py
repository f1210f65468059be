"""Training networks on simulated crossbars: rules (what travels backward), update schemes (how a
step reaches the devices), optimizers, and the loop.

    from xbar.train import TrainConfig, train
    result = train(TrainConfig(network="digits-mlp", dataset="digits", update="qat", bits=2))
    result["test_accuracy"], result["history"][-1]

Variants of one run that differ only in device-side settings (bits, quantizer, range, device) train
together, each bit for bit as alone: ``train_many([cfg_a, cfg_b, ...])`` returns one such result per
config (:mod:`xbar.train.many`, :mod:`xbar.train.stack`; what stacks and why: :mod:`xbar.train.stackable`).

Result dict: status ("ok" or "diverged": the loss became NaN/inf, or exploded past
loop.loss_limit; the message names the epoch), message, test_accuracy and train_accuracy (percent,
after the last epoch; None when the run diverged), history (one entry per epoch: epoch,
test_accuracy, train_accuracy, loss (train loss measured after the epoch), test_loss, step_loss
(mean loss over the epoch's steps), seconds (that epoch's training time, evaluation excluded),
lr), seconds (whole run), train_seconds, config (resolved, JSON-ready), network, hardware.

How to add a rule: one module with a subclass of ``rule.Rule`` decorated ``@RULES.register``
(``xbar.train.rule``): ``deltas(net, caches, e, y=None)`` returns one delta per layer using only
``layer.backward_input`` / ``layer.local_delta`` (and your own fixed matrices, exposed through
``feedback()`` if an update scheme should round them); None for a layer means it sits the step out.
Optional hooks: ``setup``, ``start_epoch(epoch)``, ``step()``; its options as ``FIELDS`` (named
``<rule>_<option>``: TrainConfig fields and ``xbar train`` flags) with ``options(cfg)``, plus
``resolve``/``check``/``time_factor``. Import the module from ``rules.py`` to ship it.
How to add an update scheme: one subclass of ``updates.Update`` decorated ``@UPDATES.register``:
``attach`` places weights on crossbars, ``after_step`` runs after every optimizer step; its
``DEFAULTS`` (what resolve fills in), ``check(setup)``, ``bias_row``, ``on_device`` and the hooks
``on_mask_change`` (pruning) and ``state_arrays`` (checkpoints).
"""

from .config import FIELDS, TrainConfig
from .loop import evaluate, train
from .many import train_many
from .optim import OPTIMIZERS, make_optimizer
from .rules import RULES, make_rule
from .trainer import Trainer
from .updates import QUANTS, UPDATES, make_update

__all__ = ["FIELDS", "OPTIMIZERS", "QUANTS", "RULES", "UPDATES", "TrainConfig", "Trainer", "evaluate",
           "make_optimizer", "make_rule", "make_update", "train", "train_many"]
