"""First contact: the dependencies' noise a user cannot act on is silenced, precisely; the rest is kept."""
import logging
import warnings

import lightning as L
import pytest
import torch

from reangle.quiet import FLUX_LOGGERS, TOKENIZER_LOGGER, silence_noise


@pytest.fixture
def quiet():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_noise()
        yield caught


def test_dependency_deprecations_are_silenced_and_others_kept(quiet):
    from diffusers.models.embeddings import FluxPosEmbed
    from lightning.pytorch.utilities._pytree import _tree_flatten

    _tree_flatten(torch.zeros(1))  # Lightning's own use of torch's LeafSpec
    FluxPosEmbed(theta=10000, axes_dim=[4, 6, 6])  # diffusers' own deprecated import path
    warnings.warn("`SomethingElse` is deprecated", FutureWarning)
    messages = [str(w.message) for w in quiet]
    assert not any("LeafSpec" in m or "FluxPosEmbed" in m for m in messages), messages
    assert "`SomethingElse` is deprecated" in messages


def test_litlogger_tip_is_silenced_and_lightnings_other_info_kept(tmp_path, caplog):
    from lightning.pytorch.loggers import CSVLogger

    silence_noise()
    with caplog.at_level(logging.INFO):
        L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), enable_checkpointing=False, max_steps=1)
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text


def test_tokenizer_and_truncation_messages_only_when_nothing_was_cut(caplog):
    silence_noise()
    silence_noise()  # idempotent
    with caplog.at_level(logging.WARNING):
        logging.getLogger(TOKENIZER_LOGGER).warning(
            "Token indices sequence length is longer than the specified maximum sequence length for this model "
            "(33 > 32). Running this sequence through the model will result in indexing errors")
        flux = logging.getLogger(FLUX_LOGGERS[0])
        flux.warning("The following part of your input was truncated because `max_sequence_length` is set to  32 "
                     "tokens: ['']")
        flux.warning("The following part of your input was truncated because `max_sequence_length` is set to  32 "
                     "tokens: ['on the beach at sunset']")
        logging.getLogger(TOKENIZER_LOGGER).warning("something else went wrong")
    assert "Token indices" not in caplog.text and "['']" not in caplog.text
    assert "on the beach at sunset" in caplog.text and "something else went wrong" in caplog.text
    ours = [f for f in logging.getLogger(FLUX_LOGGERS[0]).filters if type(f).__module__ == "reangle.quiet"]
    assert len(ours) == 1  # installed once, however often silence_noise runs
