"""The GPU suite: for every family, training throughput of speechtrain and of its peer at the same config and batch,
in one process, over precision (fp32, bf16), attention (SDPA, flash-attn) and compile (off, on), with MFU where
the device's peak is known (FLOPs counted by `torch.utils.flop_counter` on one step). One command on a CUDA machine:

    python bench/gpu_suite.py --out docs/gpu_suite.md            # every case, at most 8 minutes
    python bench/gpu_suite.py --device cpu --quick                # the smoke test the test suite runs

Peers: transformers (Whisper, Speech2Text, Bark coarse), soundstorm-pytorch (SoundStorm), coqui-tts (VITS); a
peer that does not import gets a row saying so, and ours is still measured. Each case warms up (compiling, when
compiled), then times steps until `--case-seconds` (at most a minute) or `--steps` have passed; the suite stops
starting cases at `--budget` seconds (at most 8 minutes) and lists what it skipped. `--quick` shrinks every model,
runs one step a case, fp32 only, and compiles one family with the `aot_eager` backend (no code generation), so it
checks the suite's code paths in seconds on a CPU; its numbers mean nothing. Writes a markdown table (stdout and
`--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from common import torch_dtype, training_step_fn
from torch.utils.flop_counter import FlopCounterMode

from speechtrain.distributed import compile_blocks

MAX_CASE_SECONDS, MAX_BUDGET_SECONDS = 60.0, 480.0
# Dense peak FLOP/s by device name and dtype (fp32 without TF32: the default float32 matmul precision).
PEAKS = {"H100": {"bf16": 989e12, "fp32": 67e12}, "H200": {"bf16": 989e12, "fp32": 67e12},
         "A100": {"bf16": 312e12, "fp32": 19.5e12}}


@dataclasses.dataclass(frozen=True)
class Variant:
    dtype: str  # fp32 or bf16
    attention: str  # sdpa or flash_attention_2
    compiled: bool

    def label(self) -> str:
        attention = self.attention.replace("_attention_2", "-attn")
        return f"{self.dtype}, {attention}, compile {'on' if self.compiled else 'off'}"


@dataclasses.dataclass
class Case:
    """One family at one variant: a training step of ours, of the peer (None when it has none or does not
    import, with `peer_missing` saying why), and the items (tokens, frames) a step trains on."""

    family: str
    ours: Callable[[], None]
    peer: Callable[[], None] | None
    peer_name: str
    items: int
    unit: str
    peer_missing: str = ""


def _under_autocast(step: Callable[[], None], device: str, dtype: torch.dtype) -> Callable[[], None]:
    """`step` run under autocast to `dtype` (as it is for fp32): for the steps that own their loss and optimizer."""
    def run() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            step()
    return run


def _seq2seq_case(family: str, args: argparse.Namespace, variant: Variant) -> Case:
    """Whisper or Speech2Text beside transformers' model of the same config and weights."""
    dtype = torch_dtype(variant.dtype)
    tokens, batch = (16, 1) if args.quick else (args.tokens, args.batch_size)
    if family == "whisper":
        from whisper import SIZES, hf_config

        from speechtrain.models.whisper import model_from_hf_config

        dims = (64, 1, 2) if args.quick else SIZES["tiny"]
        theirs = transformers.WhisperForConditionalGeneration(hf_config(*dims, vocab_size=51865))
        features = torch.randn(batch, 80, 3000, device=args.device)
        frame_mask = None
    else:
        from speech2text import SIZES, hf_config

        from speechtrain.models.speech2text import model_from_hf_config

        dims = (64, 128, 2) if args.quick else SIZES["s"]
        theirs = transformers.Speech2TextForConditionalGeneration(hf_config(*dims, vocab_size=10000))
        frames = 200 if args.quick else 998
        features = torch.randn(batch, frames, 80, device=args.device)
        frame_mask = torch.ones(batch, frames, dtype=torch.long, device=args.device)
    theirs.config._attn_implementation = variant.attention
    ours = model_from_hf_config({**theirs.config.to_dict(), "attn_implementation": variant.attention})
    ours.load_state_dict(theirs.state_dict())
    ours.to(args.device).train(), theirs.to(args.device).train()
    if variant.compiled:
        compile_blocks(ours, _compile_options(args))
    decoder_input_ids = torch.randint(4, 9000, (batch, tokens), device=args.device)
    labels = torch.randint(4, 9000, (batch, tokens), device=args.device)
    mask = None if frame_mask is None else frame_mask.bool()

    ours_step = training_step_fn(ours, lambda: ours(features, mask, decoder_input_ids, None), labels, dtype,
                                 args.device)
    their_step = None if variant.compiled else training_step_fn(
        theirs, lambda: theirs(input_features=features, attention_mask=frame_mask,
                               decoder_input_ids=decoder_input_ids).logits, labels, dtype, args.device)
    return Case(family, ours_step, their_step, "transformers", batch * tokens, "tokens")


def _bark_case(args: argparse.Namespace, variant: Variant) -> Case:
    """Bark's coarse model (late generation windows) beside transformers' BarkCoarseModel."""
    from bark import HF, SIZES, VOCABS, batch_of

    from speechtrain.models.bark import load_hf_state_dict, model_from_hf_config

    dtype = torch_dtype(variant.dtype)
    config_class, model_class = HF["coarse_acoustics"]
    size = dict(hidden_size=64, num_layers=1, num_heads=2) if args.quick else SIZES["small"]
    theirs = model_class(config_class(**VOCABS["coarse_acoustics"], **size, block_size=1024, dropout=0.0))
    theirs.config._attn_implementation = variant.attention
    ours = model_from_hf_config({**theirs.config.to_dict(), "attn_implementation": variant.attention})
    load_hf_state_dict(ours, theirs.state_dict())
    ours.to(args.device).train(), theirs.to(args.device).train()
    if variant.compiled:
        compile_blocks(ours, _compile_options(args))
    batch = batch_of("coarse_acoustics", 1 if args.quick else args.batch_size, 4.0, args.device)
    ids, labels = batch["input_ids"], batch["labels"]

    ours_step = training_step_fn(ours, lambda: ours(ids)[0], labels, dtype, args.device)
    their_step = None if variant.compiled else training_step_fn(
        theirs, lambda: theirs(input_ids=ids, use_cache=False).logits, labels, dtype, args.device)
    return Case("bark (coarse)", ours_step, their_step, "transformers", int((labels != -100).sum()), "tokens")


def _soundstorm_case(args: argparse.Namespace, variant: Variant) -> Case:
    """SoundStorm's training step (`SoundStormTask.model_step`) beside soundstorm-pytorch's."""
    import soundstorm

    dtype = torch_dtype(variant.dtype)
    quick = args.quick
    options = argparse.Namespace(codebook_size=1024, levels=8, dim=64 if quick else 512, heads=2 if quick else 8,
                                 dim_head=32 if quick else 64, semantic_tokens=500,
                                 attn_implementation=variant.attention, batch_size=1 if quick else args.batch_size,
                                 frames=75 if quick else 750)
    depth = 1 if quick else 6
    ours = soundstorm.build_ours(options, depth).to(args.device)
    if variant.compiled:
        compile_blocks(ours, _compile_options(args))
    theirs = None if soundstorm.PEER_MISSING or variant.compiled else soundstorm.build_theirs(options, depth)
    steps = soundstorm.training_steps(options, ours, None if theirs is None else theirs.to(args.device), args.device)

    peer = None if theirs is None else _under_autocast(steps["soundstorm-pytorch"], args.device, dtype)
    return Case("soundstorm", _under_autocast(steps["speechtrain"], args.device, dtype), peer, "soundstorm-pytorch",
                options.batch_size * options.frames, "frames", soundstorm.PEER_MISSING or "")


def _vits_case(args: argparse.Namespace, variant: Variant) -> Case:
    """VITS's GAN step (`VitsTask.training_step`) beside coqui-tts's."""
    import vits
    from common import batch_to, lightning_step_fn, tts_batch

    dtype = torch_dtype(variant.dtype)
    size = "small" if args.quick else "ljspeech"
    ours = vits.build_ours(size, 178, variant.attention).to(args.device)
    if variant.compiled:
        compile_blocks(ours, _compile_options(args))
    batch_size, tokens = (1, 10) if args.quick else (args.batch_size, 60)
    batch = tts_batch(batch_size, tokens, (0.5, 0.6) if args.quick else (2.0, 3.0), 178, vits.SAMPLE_RATE,
                      vits.N_FFT, vits.HOP)
    frames = int(batch["spectrogram_lengths"].sum())
    ours_step = lightning_step_fn(ours, batch_to(batch, args.device))
    peer = None
    if not vits.COQUI_MISSING and not variant.compiled:
        coqui = vits.build_coqui(size, 178).to(args.device)
        peer = vits.coqui_step_fn(coqui, batch_to(vits.coqui_batch(batch), args.device))

    return Case("vits", _under_autocast(ours_step, args.device, dtype),
                None if peer is None else _under_autocast(peer, args.device, dtype), "coqui-tts", frames,
                "spectrogram frames", vits.COQUI_MISSING or "")


FAMILIES: dict[str, Callable[[argparse.Namespace, Variant], Case]] = {
    "whisper": lambda args, variant: _seq2seq_case("whisper", args, variant),
    "speech2text": lambda args, variant: _seq2seq_case("speech2text", args, variant),
    "bark": _bark_case,
    "soundstorm": _soundstorm_case,
    "vits": _vits_case,
}


def _compile_options(args: argparse.Namespace) -> dict:
    return {"backend": "aot_eager"} if args.quick else {}


def variants(args: argparse.Namespace, family: str) -> list[Variant]:
    """The base case (bf16 on CUDA, fp32 on the CPU; SDPA; eager) with the peer, then one change at a time. `--quick`
    compiles the first family only: one compiled case runs the code path, each more only costs tracing time."""
    base = Variant("fp32" if args.device == "cpu" else "bf16", "sdpa", False)
    cases = [base]
    if not args.quick or family == next(iter(FAMILIES)):
        cases.append(dataclasses.replace(base, compiled=True))
    if not args.quick and args.device != "cpu":
        cases.append(dataclasses.replace(base, dtype="fp32"))
        if importlib.util.find_spec("flash_attn") is not None:
            cases.append(dataclasses.replace(base, attention="flash_attention_2"))
    return cases


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def steps_per_second(step: Callable[[], None], args: argparse.Namespace) -> float:
    """After one warm-up step (which compiles, when compiled): steps until `case_seconds` or `steps` have passed."""
    step()
    _synchronize(args.device)
    start, done = time.perf_counter(), 0
    while done < args.steps and (done == 0 or time.perf_counter() - start < args.case_seconds):
        step()
        done += 1
    _synchronize(args.device)
    return done / (time.perf_counter() - start)


def counted_flops(step: Callable[[], None]) -> int:
    """FLOPs of one training step, counted by torch's dispatcher (matmuls, convolutions and attention of the forward
    and backward; the optimizer's element-wise updates have no FLOP formula there)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_flops(args: argparse.Namespace, dtype: str) -> float | None:
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peaks[dtype] for key, peaks in PEAKS.items() if key in name), None)


def run_suite(args: argparse.Namespace) -> list[str]:
    """Measures every family at every variant; returns the markdown lines."""
    started = time.perf_counter()
    lines = [f"GPU suite on {_machine(args)}; MFU = counted FLOPs x steps/s / the device's dense peak.", "",
             "| family | variant | speechtrain steps/s | items/s | MFU | peer | peer steps/s | ratio (ours / peer) |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    skipped = []
    for family, build in FAMILIES.items():
        if args.families and family not in args.families:
            continue
        flops = None
        for variant in variants(args, family):
            if time.perf_counter() - started > args.budget:
                skipped.append(f"{family} ({variant.label()})")
                continue
            torch.manual_seed(0)
            case = build(args, variant)
            if flops is None:
                flops = counted_flops(case.ours)
            ours = steps_per_second(case.ours, args)
            peak = peak_flops(args, variant.dtype)
            mfu = f"{flops * ours / peak:.1%}" if peak else "-"
            if case.peer is not None:
                theirs = steps_per_second(case.peer, args)
                peer_cells = f"{case.peer_name} | {theirs:.3f} | {ours / theirs:.2f}"
            elif case.peer_missing:
                peer_cells = f"{case.peer_name}: not run, does not import | - | -"
            else:
                peer_cells = f"{case.peer_name} (eager only) | - | -"
            lines.append(f"| {case.family} | {variant.label()} | {ours:.3f} | {ours * case.items:,.0f} {case.unit} "
                         f"| {mfu} | {peer_cells} |")
            del case
            if args.device == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
    lines.append("")
    lines.append(f"{time.perf_counter() - started:.0f} s in all" + (f"; skipped at the budget: {', '.join(skipped)}"
                                                                   if skipped else ""))
    return lines


def _machine(args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    flash = "flash-attn installed" if importlib.util.find_spec("flash_attn") else "no flash-attn"
    return (f"{args.device} ({device}, {torch.get_num_threads()} CPU threads), torch {torch.__version__}, "
            f"transformers {transformers.__version__}, {flash}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models, one step a case: the smoke test")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="decoder tokens per ASR example")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case, at most")
    parser.add_argument("--case-seconds", type=float, default=20.0, help=f"per case, at most {MAX_CASE_SECONDS:g}")
    parser.add_argument("--budget", type=float, default=420.0, help=f"start no case after this many seconds "
                        f"(at most {MAX_BUDGET_SECONDS:g})")
    parser.add_argument("--families", nargs="*", choices=list(FAMILIES), help="only these (default: all)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.case_seconds > MAX_CASE_SECONDS or args.budget > MAX_BUDGET_SECONDS:
        parser.error(f"a case runs at most {MAX_CASE_SECONDS:g} s and the suite at most {MAX_BUDGET_SECONDS:g} s")
    if args.quick:
        args.steps, args.case_seconds = 1, 1.0
    lines = run_suite(args)
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
