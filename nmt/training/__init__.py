"""Training: the LightningModule, loss, optimizers, schedules, callbacks, crash-safe
checkpoints, loggers and ``train`` itself. May import decoding, model, data and core.
"""
