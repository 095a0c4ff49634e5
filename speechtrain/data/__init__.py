"""Audio I/O, corpora, features, tokenizers, samplers, collators and data modules.

Every torchaudio user lives here, so the package checks once that torchaudio loads against the installed torch
and otherwise says in one sentence which versions are installed and how to fix them.
"""

from speechtrain.dependencies import import_torchaudio

import_torchaudio()
