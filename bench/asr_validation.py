"""The ASR task's validation step before and after it encoded each batch once, in one process: milliseconds per
batch of the `whisper_mini` recipe (or another ASR recipe) on its bundled validation data.

    python bench/asr_validation.py                           # whisper_mini as at its first validation, CPU
    python bench/asr_validation.py --device cuda --rounds 20 --num-beams 4
    python bench/asr_validation.py --recipe s2t_mini --fit-epochs 0   # an untrained model: decodes to the limit

"After" is `Seq2SeqASRTask.validation_step` itself: one encoder pass, whose states give the teacher-forced loss and
feed the search. "Before" is what that step did until then: the model's forward for the loss, then a decoding that
encodes the batch again. The model is first trained for `--fit-epochs` (default: the recipe's
`trainer.check_val_every_n_epoch`, so its hypotheses are as long as at the recipe's first validation; an untrained
model writes to the decoder's position limit, where the encoder is a small share). Rounds alternate which path runs
first, the first round is a warm-up, and the table gives the median. Prints a markdown table (paste into
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

import lightning as L
import torch
from common import batch_to, machine_line, time_rounds, torch_dtype
from hydra import initialize_config_dir

from speechtrain.decoding import decode_to_text
from speechtrain.scoring import error_counts
from speechtrain.train import CONFIG_DIR, build, compose_root


def build_recipe(recipe: str, num_beams: int | None, output_dir: str) -> tuple[Any, Any, int]:
    """The recipe's task and data module as the tests build them (`tests/conftest.py`'s `compose`), on the CPU;
    with the recipe's epochs between validations."""
    overrides = [f"recipe={recipe}", f"paths.output_dir={output_dir}", "trainer.accelerator=cpu"]
    if num_beams is not None:
        overrides.append(f"task.num_beams={num_beams}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose_root(overrides)
    L.seed_everything(0)
    task, datamodule = build(cfg)
    datamodule.setup("fit")
    return task, datamodule, int(cfg.trainer.check_val_every_n_epoch)


def fit(task: Any, datamodule: Any, epochs: int, device: str) -> None:
    """Plain training (no validation, logger or checkpoints), so that the model decodes as a trained one does."""
    if epochs == 0:
        return
    trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, use_distributed_sampler=False, gradient_clip_val=1.0)
    trainer.fit(task, datamodule=datamodule)


def score_batch_encoding_twice(task: Any, batch: dict[str, Any]) -> list[str]:
    """The validation step as it was: the forward (encoder + decoder) for the loss, then a decoding that encodes the
    features again; the same logging and scoring calls as `Seq2SeqASRTask._score_batch`."""
    task.log("val/loss", task.model_step(batch), prog_bar=True, batch_size=len(batch["ids"]), sync_dist=True)
    hypotheses = decode_to_text(task.model, task.tokenizer, batch["input_features"], batch["attention_mask"],
                                task.num_beams, task.max_new_tokens)
    task._val_counts += error_counts(batch["texts"], hypotheses, task.normalizer)
    return hypotheses


def encoder_passes(task: Any, step: Any) -> int:
    """How many times `step()` runs the model's encoder."""
    passes = []
    hook = task.model.get_encoder().register_forward_hook(lambda module, args, output: passes.append(1))
    try:
        step()
    finally:
        hook.remove()
    return len(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="whisper_mini")
    parser.add_argument("--fit-epochs", type=int, default=None,
                        help="training epochs before timing (default: the recipe's check_val_every_n_epoch)")
    parser.add_argument("--num-beams", type=int, default=None, help="default: the recipe's task.num_beams")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per path (the median is printed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="autocast dtype of the steps")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as output_dir:
        task, datamodule, check_every = build_recipe(args.recipe, args.num_beams, output_dir)
        fit(task, datamodule, check_every if args.fit_epochs is None else args.fit_epochs, args.device)
        task = task.to(args.device).eval()
        task.log = lambda *args, **kwargs: None  # no Trainer's loop around the steps; logging is not what is timed
        batches = [batch_to(batch, args.device) for batch in datamodule.val_dataloader()]
    dtype = torch_dtype(args.dtype)

    def run(step: Any) -> Any:
        def every_batch() -> list[list[str]]:
            with torch.inference_mode(), torch.autocast(args.device, dtype, enabled=dtype != torch.float32):
                return [step(batch, index) for index, batch in enumerate(batches)]
        return every_batch

    before = run(lambda batch, index: score_batch_encoding_twice(task, batch))
    after = run(lambda batch, index: task.validation_step(batch, index))
    task._start_scoring()
    task.num_logged_predictions = sum(len(batch["ids"]) for batch in batches)
    passes = encoder_passes(task, before), encoder_passes(task, after)
    if sum(before(), []) != [hypothesis for _, _, hypothesis in task._val_samples]:
        raise SystemExit("the two paths transcribe differently")
    seconds = time_rounds({"before": before, "after": after}, args.rounds, args.device)
    before_ms, after_ms = (1000 * statistics.median(seconds[name]) / len(batches) for name in ("before", "after"))

    words = [len(hypothesis.split()) for _, _, hypothesis in task._val_samples]
    print(f"{machine_line(args.device)}, {args.dtype}; {args.recipe}: {len(batches)} validation batches of "
          f"{sum(len(b['ids']) for b in batches)} utterances, num_beams {task.num_beams}, hypotheses of "
          f"{statistics.mean(words):.1f} words on average, median of {args.rounds} rounds")
    print("| | before (encodes twice) | after (encodes once) | ratio (before / after) |")
    print("|---|---:|---:|---:|")
    print(f"| encoder passes per batch | {passes[0] / len(batches):g} | {passes[1] / len(batches):g} | |")
    print(f"| validation time per batch, {args.recipe}, ms | {before_ms:.1f} | {after_ms:.1f} | "
          f"{before_ms / after_ms:.2f} |")


if __name__ == "__main__":
    main()
