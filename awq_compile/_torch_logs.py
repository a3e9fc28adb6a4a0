"""Registers the ``awq`` log name with PyTorch's logging system.

``TORCH_LOGS="awq"`` (INFO: one line per layer rewritten or skipped) and ``TORCH_LOGS="+awq"`` (DEBUG:
also candidates, verification details, timings) control the ``awq_compile`` logger.  PyTorch parses
``TORCH_LOGS`` while it is being imported and rejects names it does not know, so this function is
also an entry point in the ``torch.backends`` group, which torch calls just before parsing.  It must
stay tiny: it runs inside ``import torch``.
"""

LOG_NAME = "awq"
LOGGER = "awq_compile"


def register() -> None:
    from torch._logging import _internal

    if LOG_NAME not in _internal.log_registry.log_alias_to_log_qnames:
        _internal.register_log(LOG_NAME, LOGGER)
