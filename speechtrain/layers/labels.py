"""The label value that marks a position nothing is scored on (padding, prompts, unmasked codes).

-100 is `torch.nn.functional.cross_entropy`'s default `ignore_index` and transformers' label padding, so labels
built here score the same in either. Every collator, layout, task and callback reads it from this one place.
"""

from __future__ import annotations

IGNORE_INDEX = -100
