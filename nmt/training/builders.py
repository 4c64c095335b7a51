"""What a run trains, from its config: the LightningModule and the data module, for
translation (text in, text out) and for captioning (images in); and how the run's
translations are scored. Fine-tuning (``init``, nmt.training.finetune) hands both
builders a checkpoint's tokenizers and weights.
"""

from __future__ import annotations

import functools
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nmt.core.errors import ConfigError
from nmt.core.metrics import Scoring, caption_scores
from nmt.data.captioning import ImageSettings
from nmt.data.datamodule import CaptionDataModule, NMTDataModule
from nmt.decoding.shortlist import from_counts as shortlist_table
from nmt.model.image_encoder import ImageEncoder
from nmt.training.finetune import InitFrom
from nmt.training.module import EVAL_METRICS, TranslationModule, translation_scores


def plain(cfg: DictConfig | dict) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def make_module(cfg: DictConfig, src_vocab_size: int, tgt_vocab_size: int, **kwargs: Any
                ) -> TranslationModule:
    return TranslationModule(src_vocab_size, tgt_vocab_size, plain(cfg.model), plain(cfg.optim),
                             cfg.loss.label_smoothing, plain(cfg.validation),
                             plain(cfg.test_decoding), cfg.loss.doubly_stochastic, **kwargs)


def build_translation(cfg: DictConfig, init: InitFrom | None = None
                      ) -> tuple[NMTDataModule, TranslationModule]:
    """``init``: the checkpoint to fine-tune, whose tokenizers encode the data."""
    if cfg.model.get("encoder") == "image":
        raise ConfigError("model: an image encoder translates no text; use task=caption, "
                          "or a text model (model=lstm)")
    if cfg.model.get("tie_src_tgt") and not cfg.tokenizer.joint:
        raise ConfigError("model.tie_src_tgt=true needs a joint vocabulary (tokenizer=spm_joint)")
    # Build the module once with a dummy vocabulary: every model/optim error shows up
    # now, before any data is touched; so do the scores' (a tokenizer's missing extra).
    make_module(cfg, 8, 8)
    scoring = scoring_of(cfg)
    scoring.signatures(EVAL_METRICS)
    dm = NMTDataModule(plain(cfg.data), plain(cfg.tokenizer),
                       max_tokens=cfg.batching.max_tokens,
                       eval_max_tokens=cfg.batching.eval_max_tokens,
                       num_workers=cfg.batching.num_workers, seed=cfg.seed,
                       tokenizers=init.tokenizers if init is not None else None)
    dm.setup("fit")  # fetch, tokenizers, encoding: cached after the first run
    prepared = dm.prepared
    assert prepared is not None
    module = make_module(cfg, prepared.src_tokenizer.vocab_size,
                         prepared.tgt_tokenizer.vocab_size, references=dm.references,
                         scorer=functools.partial(translation_scores, scoring=scoring))
    if init is not None:
        init.load_into(module.model)
    module.set_tokenizers(prepared.src_tokenizer, prepared.tgt_tokenizer)
    module.languages = {"src": cfg.data.src_lang, "tgt": cfg.data.tgt_lang}
    if cfg.shortlist.enabled:  # decoding.shortlist's table, of the counts prepare cached
        module.shortlist = shortlist_table(prepared.counts(), cfg.shortlist.per_source,
                                           cfg.shortlist.frequent).state()
    return dm, module


def scoring_of(cfg: DictConfig) -> Scoring:
    """How this run's translations are scored: into data.tgt_lang, metrics.bleu_tokenize."""
    return Scoring(cfg.data.tgt_lang, cfg.metrics.bleu_tokenize)


def build_captioning(cfg: DictConfig, init: InitFrom | None = None
                     ) -> tuple[CaptionDataModule, TranslationModule]:
    """An image encoder's model over images and captions: the same module and decoder;
    ``init``: the checkpoint to fine-tune, whose tokenizer encodes the captions."""
    if cfg.model.get("encoder") != "image":
        raise ConfigError(f"task=caption needs an image encoder (model=show_attend_tell or "
                          f"show_attend_tell_resnet), not model.encoder={cfg.model.get('encoder')}")
    probe = make_module(cfg, 1, 8).model.encoder  # errors before data; the grid's size
    assert isinstance(probe, ImageEncoder)
    settings = ImageSettings.of(plain(cfg.model))
    rows, cols = probe.grid_shape(settings.size)
    dm = CaptionDataModule(plain(cfg.data), plain(cfg.tokenizer), settings, rows * cols,
                           max_tokens=cfg.batching.max_tokens,
                           eval_max_tokens=cfg.batching.eval_max_tokens,
                           num_workers=cfg.batching.num_workers, seed=cfg.seed,
                           caption_tokenizer=init.tgt_tokenizer if init is not None else None)
    dm.setup("fit")
    module = make_module(cfg, 1, dm.tokenizer.vocab_size, references=dm.references,
                         scorer=caption_scores)
    if init is not None:  # before a frozen encoder's features are computed
        init.load_into(module.model)
    encoder = module.model.encoder
    assert isinstance(encoder, ImageEncoder)
    if encoder.frozen:
        dm.use_encoder(encoder)  # features computed once, cached on disk
    module.set_tokenizers(None, dm.tokenizer)
    return dm, module
