"""SoundStorm side by side with lucidrains' soundstorm-pytorch, in one process: the training step (masking,
forward, backward, AdamW step) and the generation of 10 s of codes, same dimensions, same batch, same machine.

soundstorm-pytorch pulls audiolm-pytorch, which imports fairseq (broken on Python 3.11) at import time; a
stand-in `fairseq` module is put into `sys.modules` first (only HuBERT/vq-wav2vec loading needs the real one).
It lives in a venv of its own that also holds speechtrain:

    python3 -m venv /work/venv-soundstorm
    /work/venv-soundstorm/bin/pip install "torch==2.11.*" "torchaudio==2.11.*" soundstorm-pytorch safetensors \
        "lightning==2.6.*" soundfile
    /work/venv-soundstorm/bin/pip install -e . --no-deps
    /work/venv-soundstorm/bin/python bench/soundstorm.py                     # dim 256, depth 4, CPU
    /work/venv-soundstorm/bin/python bench/soundstorm.py --device cuda --dim 1024 --depth 12 --heads 16

Both are conditioned on semantic tokens at the codec frame rate (so neither resamples), with plain residuals
(theirs: `num_residual_streams=1`) and no self-conditioning. soundstorm-pytorch 0.6 mixes the first layer's
attention values into every later layer (`to_value_residual_mix`, `heads * dim` weights a layer, always on):
the parameter counts are compared without those, and the logits parity is measured at depth 1, where the
two architectures coincide, by loading their weights into ours with `load_soundstorm_pytorch_state_dict`.
Ours runs `SoundStormTask.model_step` (the paper's masking + cross-entropy); theirs `SoundStorm.forward`.
Generation: 16 passes for the first level and 1 for each other (theirs: `steps=16`,
`num_full_sampling_levels=1`). Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import types
from collections.abc import Callable

import torch
from torch import nn

sys.modules.setdefault("fairseq", types.SimpleNamespace(checkpoint_utils=None))  # see the module docstring
from common import time_rounds  # noqa: E402

try:  # the peer; bench/gpu_suite.py builds ours without it
    from soundstorm_pytorch import ConformerWrapper
    from soundstorm_pytorch import SoundStorm as TheirSoundStorm
except ImportError as error:
    PEER_MISSING: str | None = f"soundstorm-pytorch does not import ({error})"
else:
    PEER_MISSING = None

from speechtrain.models.soundstorm import (  # noqa: E402
    SoundStorm,
    SoundStormConfig,
    generate,
    load_soundstorm_pytorch_state_dict,
)
from speechtrain.tasks.soundstorm import SoundStormTask  # noqa: E402

HOP, SAMPLE_RATE = 320, 24_000  # 75 Hz codec frames; the semantic tokens at the same rate


def build_ours(args: argparse.Namespace, depth: int) -> SoundStorm:
    return SoundStorm(SoundStormConfig(
        codebook_size=args.codebook_size, num_quantizers=args.levels, dim=args.dim, depth=depth, heads=args.heads,
        dim_head=args.dim_head, conv_kernel_size=31, num_semantic_tokens=args.semantic_tokens,
        semantic_rate=SAMPLE_RATE / HOP, acoustic_rate=SAMPLE_RATE / HOP,
        attn_implementation=getattr(args, "attn_implementation", "sdpa"),
    ))


def build_theirs(args: argparse.Namespace, depth: int) -> TheirSoundStorm:
    net = ConformerWrapper(codebook_size=args.codebook_size, num_quantizers=args.levels, conformer=dict(
        dim=args.dim, depth=depth, heads=args.heads, dim_head=args.dim_head, conv_kernel_size=31,
        num_residual_streams=1))
    return TheirSoundStorm(net, steps=16, schedule="cosine", num_semantic_token_ids=args.semantic_tokens,
                           wav2vec_target_sample_hz=SAMPLE_RATE, wav2vec_downsample_factor=HOP,
                           codec_target_sample_hz=SAMPLE_RATE, codec_downsample_factor=HOP)


def count(module: nn.Module, skip: str = "to_value_residual_mix") -> tuple[int, int]:
    """(parameters without `skip`, parameters named `skip`)."""
    named = list(module.named_parameters())
    return (sum(p.numel() for n, p in named if skip not in n), sum(p.numel() for n, p in named if skip in n))


def logits_parity(args: argparse.Namespace) -> float:
    """Max |ours - theirs| of the logits at depth 1 with their weights loaded into ours (eval, same inputs)."""
    torch.manual_seed(0)
    theirs, ours = build_theirs(args, 1).eval(), build_ours(args, 1).eval()
    ours.load_state_dict(load_soundstorm_pytorch_state_dict(theirs.state_dict()), strict=True)
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, args.codebook_size + 1, (2, 120, args.levels), generator=generator)
    semantic = torch.randint(0, args.semantic_tokens, (2, 120), generator=generator)
    frame_mask = torch.ones(2, 120, dtype=torch.bool)
    frame_mask[1, 90:] = False
    with torch.no_grad():
        cond = theirs.maybe_get_condition(semantic, length=120)
        their_logits = theirs.net(codes.flatten(1), mask=frame_mask, cond=cond)  # [B, T * Q, K]
        our_logits = ours(codes, frame_mask, semantic).flatten(1, 2)
    return (their_logits - our_logits)[frame_mask.repeat_interleave(args.levels, dim=1)].abs().max().item()


def training_steps(args: argparse.Namespace, ours: SoundStorm, theirs: TheirSoundStorm | None, device: str
                   ) -> dict[str, Callable[[], None]]:
    """The training step of each (ours alone when `theirs` is None), on one batch."""
    generator = torch.Generator().manual_seed(0)
    frames = args.frames
    codes = torch.randint(0, args.codebook_size, (args.batch_size, frames, args.levels), generator=generator)
    semantic = torch.randint(0, args.semantic_tokens, (args.batch_size, frames), generator=generator)
    frame_mask = torch.ones(args.batch_size, frames, dtype=torch.bool)
    batch = {"codes": codes, "frame_mask": frame_mask, "semantic_ids": semantic, "semantic_mask": frame_mask,
             "ids": [str(i) for i in range(args.batch_size)], "texts": [""] * args.batch_size}
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    task = SoundStormTask(ours, functools.partial(torch.optim.AdamW, lr=1e-4)).train()
    our_optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)

    def our_step() -> None:
        loss, _ = task.model_step(batch)
        loss.backward()
        our_optimizer.step()
        our_optimizer.zero_grad(set_to_none=True)

    if theirs is None:
        return {"speechtrain": our_step}
    their_optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    theirs.train()

    def their_step() -> None:
        loss, _ = theirs(batch["codes"], mask=batch["frame_mask"], cond_semantic_token_ids=batch["semantic_ids"])
        loss.backward()
        their_optimizer.step()
        their_optimizer.zero_grad(set_to_none=True)

    return {"speechtrain": our_step, "soundstorm-pytorch": their_step}


def generation_runs(args: argparse.Namespace, ours: SoundStorm, theirs: TheirSoundStorm, device: str
                    ) -> dict[str, Callable[[], None]]:
    frames = round(args.seconds * SAMPLE_RATE / HOP)
    semantic = torch.randint(0, args.semantic_tokens, (1, frames), generator=torch.Generator().manual_seed(1))
    semantic = semantic.to(device)
    return {
        "speechtrain": lambda: generate(ours, semantic_ids=semantic, steps=(16, 1), filter_thres=0.7),
        "soundstorm-pytorch": lambda: theirs.generate(cond_semantic_token_ids=semantic, num_full_sampling_levels=1,
                                                      filter_thres=0.7),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim-head", type=int, default=64)
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--semantic-tokens", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=300, help="codec frames per training example")
    parser.add_argument("--seconds", type=float, default=10.0, help="generated audio (75 frames a second)")
    parser.add_argument("--rounds", type=int, default=3, help="timed training steps per model, after a warm-up")
    parser.add_argument("--generation-rounds", type=int, default=1)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if PEER_MISSING:
        raise SystemExit(f"{PEER_MISSING}; install it as the module docstring says")

    parity = logits_parity(args)
    torch.manual_seed(0)
    ours, theirs = build_ours(args, args.depth).to(args.device), build_theirs(args, args.depth).to(args.device)
    (our_count, _), (their_count, value_mix) = count(ours), count(theirs)
    if our_count != their_count:
        raise SystemExit(f"parameter counts differ: ours {our_count:,}, theirs {their_count:,} (+{value_mix:,})")

    load_before = os.getloadavg()[0]
    train = time_rounds(training_steps(args, ours, theirs, args.device), args.rounds, args.device)
    sample = time_rounds(generation_runs(args, ours, theirs, args.device), args.generation_rounds, args.device)
    names = ("speechtrain", "soundstorm-pytorch")
    train_s = [statistics.median(train[n]) for n in names]
    sample_s = [statistics.median(sample[n]) for n in names]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    frames = round(args.seconds * SAMPLE_RATE / HOP)
    print(f"\nSoundStorm (dim {args.dim}, depth {args.depth}, {args.heads} heads x {args.dim_head}, ff x4, conv "
          f"kernel 31, {args.levels} levels x {args.codebook_size} codes, {args.semantic_tokens} semantic tokens); "
          f"training batch {args.batch_size} x {args.frames} frames; generation {frames} frames x {args.levels} "
          f"levels, 16 + {args.levels - 1} passes; {args.device} fp32 ({device_name}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}); medians of {args.rounds} / {args.generation_rounds} alternating "
          f"runs after a warm-up; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| | speechtrain | soundstorm-pytorch | ratio (theirs / ours) |")
    print("|---|---:|---:|---:|")
    print(f"| training step (mask + fwd + bwd + AdamW), s | {train_s[0]:.3f} | {train_s[1]:.3f} | "
          f"{train_s[1] / train_s[0]:.2f} |")
    print(f"| generation of {args.seconds:g} s ({frames} x {args.levels}), s | {sample_s[0]:.2f} | {sample_s[1]:.2f} | "
          f"{sample_s[1] / sample_s[0]:.2f} |")
    print(f"| parameters | {our_count:,} | {their_count:,} (+{value_mix:,} value-residual mix) | "
          f"{their_count / our_count:.3f} |")
    print(f"| logits max abs diff, their weights in ours (depth 1) | {parity:.1e} | | |")


if __name__ == "__main__":
    main()
