"""What an executed notebook shows: no red box for output that is known and harmless.

An executed notebook is read as a report, and nbconvert draws everything written to stderr as a red
box. Silenced here, each narrowly by its message (and category), because each is understood:
- tqdm's "IProgress not found" warning (no ipywidgets in a papermill kernel);
- transformers' weight-loading and shard-writing bars, and datasets' split and map bars;
- TRL's note that padding-free batches want Flash Attention: lab2 passes position_ids, and
  tests/test_padding_free.py shows the packed loss equals each sequence's own on SDPA;
- bitsandbytes' note that a Hub-fetched nf4 CPU kernel is missing (it falls back to its own library);
- transformers' note that the trainer aligned the config's eos with the tokenizer's <|eot_id|>,
  which lab2's chat template ends every turn with.
Training progress stays: in a kernel the Trainer draws its own HTML step table (not stderr).
Anything else, a truncation count, a NaN, a resume, a real warning, stays visible.
"""

from __future__ import annotations

import logging
import re
import warnings

# logger that emits it -> the message it emits (a filter on the emitting logger sees its records)
KNOWN_LOG_MESSAGES = {
    "trl.trainer.sft_trainer": r"Padding-free training is enabled, but the attention implementation is not set to a supported",
    "transformers.trainer_utils": r"The tokenizer has new PAD/BOS/EOS tokens that differ from the model config",
    # On AVX512-bf16 CPUs bitsandbytes tries a faster nf4 kernel that the `kernels` package fetches from the Hub
    # at run time; offline it falls back to its own CPU library, which every 4-bit test runs on.
    "bitsandbytes.backends.cpu.ops": r"Failed to load CPU gemm_4bit_forward from kernels-community",
}


class _DropKnown(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_known_noise() -> None:
    """Silence the known, harmless stderr output listed above; idempotent."""
    warnings.filterwarnings("ignore", message=r"IProgress not found", module=r"tqdm\.auto")
    import transformers.utils.logging as hf_logging

    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()  # "Generating train split", "Map": seconds each, drawn as stderr bars
    for name, pattern in KNOWN_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(pattern))
