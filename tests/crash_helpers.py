"""Callbacks that end a training process the way the outside world does, at a chosen batch.

Used through the command line, as any callback can be:
``+callbacks.extra.kill._target_=crash_helpers.SignalAt +callbacks.extra.kill.step=12``
(with tests/ on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Sends ``signum`` to this process after training batch ``step`` (a global step), or
    after batch ``batch`` of epoch ``epoch``. SIGKILL ends it on the spot, as an OOM killer
    or a power cut would; other signals go through the process's handlers."""

    def __init__(self, signum: int = signal.SIGKILL, step: int | None = None,
                 epoch: int | None = None, batch: int | None = None) -> None:
        self.signum, self.step, self.epoch, self.batch = signum, step, epoch, batch
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        hit = (trainer.global_step == self.step if self.step is not None
               else (trainer.current_epoch, batch_idx) == (self.epoch, self.batch))
        if hit and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
