"""Silencing what the dependencies print that a user of reangle cannot act on, and nothing else.

Each filter names one message precisely (its text and its source); every other warning and log
record passes:

* Lightning's tip to install ``litlogger`` (an advertisement, printed on every fit);
* torch's ``LeafSpec`` deprecation, raised inside Lightning's own pytree helper;
* diffusers' ``FluxPosEmbed`` import deprecation, raised inside diffusers' own FLUX modules;
* the tokenizer's "Token indices sequence length is longer than ..." from the untruncated
  tokenization that diffusers runs only to detect truncation (the text encoder gets the
  truncated ids; a prompt that really is cut is reported by the next message);
* diffusers' "The following part of your input was truncated ...: ['']" when nothing but
  padding was cut (a real cut, naming the dropped words, is kept).
"""
from __future__ import annotations

import logging
import warnings

TOKENIZER_LOGGER = "transformers.tokenization_utils_base"
FLUX_LOGGERS = ("diffusers.pipelines.flux.pipeline_flux", "diffusers.pipelines.flux.pipeline_flux_fill",
                "diffusers.pipelines.flux.pipeline_flux_controlnet_inpainting")
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                          "lightning_utilities.core.rank_zero")


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of ``prefixes`` (and, if given, ends with ``suffix``)."""

    def __init__(self, prefixes: tuple[str, ...], suffix: str | None = None, contains: str | None = None):
        super().__init__()
        self.prefixes, self.suffix, self.contains = prefixes, suffix, contains

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage().strip()
        match = message.startswith(self.prefixes) and (self.suffix is None or message.endswith(self.suffix)) \
            and (self.contains is None or self.contains in message)
        return not match


def _add_once(logger: logging.Logger, new: logging.Filter) -> None:
    if not any(type(f) is type(new) and vars(f) == vars(new) for f in logger.filters):
        logger.addFilter(new)


def silence_noise() -> None:
    """Install the filters listed in the module docstring (idempotent)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"`FluxPosEmbed` is deprecated", category=FutureWarning)
    for name in LIGHTNING_INFO_LOGGERS:
        _add_once(logging.getLogger(name), _DropMessages(("💡 Tip:",), contains="litlogger"))
    _add_once(logging.getLogger(TOKENIZER_LOGGER),
              _DropMessages(("Token indices sequence length is longer than the specified maximum sequence length",)))
    for name in FLUX_LOGGERS:
        _add_once(logging.getLogger(name),
                  _DropMessages(("The following part of your input was truncated",), suffix="['']"))
