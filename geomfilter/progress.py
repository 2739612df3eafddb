"""Progress bars of the libraries geomfilter drives (transformers, sentence-transformers): off when a
command runs with ``--no-progress``. geomfilter's own bars are tqdm bars with ``disable=not progress``."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def hf_progress_bars(enabled: bool):
    """Silence transformers' own progress bars (weight loading) inside the block when ``enabled`` is False."""
    # transformers is imported only when a model or embedder is loaded
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()
