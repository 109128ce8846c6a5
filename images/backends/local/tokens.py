"""Counting a prompt's tokens with the model's own tokenizer (for `usage`)."""

from __future__ import annotations

import logging

from images.backends.base import PipelineSource
from images.backends.local.cache import counting_tokenizer

logger = logging.getLogger(__name__)


def count_tokens(source: PipelineSource, text: str) -> int | None:
    """How many tokens the pipeline's (first) tokenizer makes of `text`, without
    truncation; None when the pipeline has no tokenizer. Uses its own copy of the
    tokenizer (lanes may be tokenizing at the same time). Loads the model if needed
    (raising PipelineError when it cannot); a tokenizer error gives None."""
    counting = counting_tokenizer(source)
    if counting is None:
        return None
    lock, tokenizer = counting
    try:
        with lock:
            return len(tokenizer(text=text, truncation=False, add_special_tokens=False)["input_ids"])
    except Exception:  # a tokenizer quirk must never fail a finished generation
        logger.warning("could not count tokens for %s", source.source, exc_info=True)
        return None
