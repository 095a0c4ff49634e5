"""Bark's three sub-models side by side with transformers' `BarkSemanticModel`, `BarkCoarseModel` and
`BarkFineModel`, in one process: training tokens per second (forward, cross-entropy, backward, AdamW step) at the
same config, the same weights and the same batch.

    /work/venv/bin/python bench/bark.py                        # hidden 256, 4 layers, batch 4, CPU
    /work/venv/bin/python bench/bark.py --device cuda --size base --batch-size 8 --dtype bf16

The batches are real layouts (`speechtrain.data.bark_data` collators over random tokens of `--seconds`-long
utterances): semantic rows are Bark's 513-id prompt plus the targets (merged to 257 + targets positions), coarse
rows one late generation window each (256 semantic ids, 630 coarse history, 60 new), fine rows one 1024-frame
window. transformers' Bark has no training loss: the cross-entropy of its logits is computed as ours is
(`ignore_index=-100`), its semantic prompt is merged the same way (`inputs_embeds`), and it runs with
`use_cache=False`. Both fine models predict
one codebook for the whole batch (transformers' takes a single `codebook_idx`). Tokens = scored label tokens.
Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import torch
import transformers
from common import add_common_arguments, machine_line, training_rates

from speechtrain.data.bark_data import BarkCoarseCollator, BarkSemanticCollator
from speechtrain.data.token_shards import TokenizedUtterance
from speechtrain.models.bark import load_hf_state_dict, model_from_hf_config
from speechtrain.models.bark.layouts import fine_batch, fine_windows

SIZES = {"small": dict(hidden_size=256, num_layers=4, num_heads=4), "base": dict(hidden_size=768, num_layers=12,
                                                                                   num_heads=12)}
VOCABS = {"semantic": dict(input_vocab_size=129_600, output_vocab_size=10_048),
          "coarse_acoustics": dict(input_vocab_size=12_096, output_vocab_size=12_096),
          "fine_acoustics": dict(input_vocab_size=1056, output_vocab_size=1056)}
HF = {"semantic": (transformers.BarkSemanticConfig, transformers.BarkSemanticModel),
      "coarse_acoustics": (transformers.BarkCoarseConfig, transformers.BarkCoarseModel),
      "fine_acoustics": (transformers.BarkFineConfig, transformers.BarkFineModel)}
FINE_CODEBOOK = 4


class RandomText:
    """Stands in for the BERT tokenizer: 40 random text ids per utterance."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def encode(self, text):
        return torch.randint(0, 119_000, (40,), generator=self.generator).tolist()

    def __len__(self):
        return 119_547


def utterances(count: int, seconds: float) -> list[TokenizedUtterance]:
    generator = torch.Generator().manual_seed(0)
    frames, semantic_frames = round(seconds * 75), round(seconds * 49.9)
    return [TokenizedUtterance(f"u{i}", "text", None, seconds, torch.randint(0, 1024, (frames, 8), generator=generator),
                               torch.randint(0, 10_000, (semantic_frames,), generator=generator)) for i in range(count)]


def batch_of(kind: str, count: int, seconds: float, device: str) -> dict[str, torch.Tensor]:
    items = utterances(count, seconds)
    if kind == "semantic":
        batch = BarkSemanticCollator(RandomText())(items)
    elif kind == "coarse_acoustics":
        rows = BarkCoarseCollator()(items[:1])  # windows of one utterance; the last ones see the full history
        batch = {key: rows[key][-count:] for key in ("input_ids", "labels")}
    else:  # one target codebook for the whole batch (see the docstring)
        batch = fine_batch([fine_windows(item.acoustic)[0] for item in items], [FINE_CODEBOOK] * count)
    return {key: value.to(device) for key, value in batch.items() if torch.is_tensor(value)}


def logits_fns(kind: str, ours, theirs, batch):
    ids = batch["input_ids"]
    if kind == "semantic":
        def merged(embed):  # [B, 513 + T] ids -> [B, 257 + T, d], text + history summed as generation does
            embeds = embed(ids)
            return torch.cat([embeds[:, :256] + embeds[:, 256:512], embeds[:, 512:]], dim=1)

        return (lambda: ours(input_embeds=merged(ours.input_embeds_layer))[0],
                lambda: theirs(inputs_embeds=merged(theirs.input_embeds_layer), use_cache=False).logits)
    if kind == "coarse_acoustics":
        return lambda: ours(ids)[0], lambda: theirs(input_ids=ids, use_cache=False).logits
    return lambda: ours(FINE_CODEBOOK, ids), lambda: theirs(codebook_idx=FINE_CODEBOOK, input_ids=ids).logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each utterance")
    add_common_arguments(parser, steps=3, sizes=SIZES, default_size="small")
    args = parser.parse_args()
    rows = []
    for kind, (config_class, model_class) in HF.items():
        torch.manual_seed(0)
        theirs = model_class(config_class(**VOCABS[kind], **SIZES[args.size], block_size=1024, dropout=0.0))
        theirs.config._attn_implementation = "sdpa"
        ours = model_from_hf_config({**theirs.config.to_dict(), "attn_implementation": "sdpa"})
        load_hf_state_dict(ours, theirs.state_dict())
        ours.to(args.device).train()
        theirs.to(args.device).train()
        batch = batch_of(kind, args.batch_size, args.seconds, args.device)
        ours_logits, theirs_logits = logits_fns(kind, ours, theirs, batch)
        with torch.no_grad():
            ours.eval(), theirs.eval()
            difference = (ours_logits() - theirs_logits()).abs().max().item()
            ours.train(), theirs.train()
        labels = batch["labels"]
        rates = training_rates({"speechtrain": (ours, ours_logits), "transformers": (theirs, theirs_logits)}, labels,
                               args)
        tokens = int((labels != -100).sum())
        rows.append((kind, tuple(batch["input_ids"].shape), tokens,
                     rates["speechtrain"] * tokens, rates["transformers"] * tokens, difference,
                     sum(p.numel() for p in ours.parameters()) / 1e6))

    print(f"\nBark sub-models ({args.size}: {SIZES[args.size]}), batch {args.batch_size}, {args.seconds} s utterances, "
          f"{args.dtype}, {machine_line(args.device)}\n")
    print("| model | params (M) | input_ids | scored tokens/step | speechtrain tokens/s | transformers tokens/s "
          "| ratio (ours / theirs) | max abs logit diff |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, shape, tokens, ours_rate, theirs_rate, difference, params in rows:
        print(f"| {kind} | {params:.1f} | {list(shape)} | {tokens} | {ours_rate:,.0f} | {theirs_rate:,.0f} "
              f"| {ours_rate / theirs_rate:.2f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
