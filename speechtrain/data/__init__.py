"""Audio I/O, corpora, spectrograms, samplers, collators and data modules (tokenizers and feature extractors
live in their families' folders, `speechtrain/models/<family>/`).

Audio I/O and codecs use torchaudio, so the package checks once that torchaudio loads against the installed torch
and otherwise says in one sentence which versions are installed and how to fix them.
"""

from speechtrain.dependencies import import_torchaudio

import_torchaudio()
