"""Training steps per second of `soundstorm_mini` before and after a change, side by side in one run: the earlier
commit's code runs from a `git worktree` of it, this checkout's from here, in alternating subprocesses (rounds
alternate which goes first). Written for issue 22, which took the host syncs out of the SoundStorm step
(masking's level and coins, the self-conditioning coin, the batch-missing flag):

    python bench/soundstorm_syncs.py --before 342b909 --rounds 3 --steps 60            # CPU
    python bench/soundstorm_syncs.py --before 342b909 --device cuda --steps 200

Each subprocess composes `soundstorm_mini` from its own tree (self-conditioning on, so its coin is drawn), builds
the task and data module and runs a Lightning `fit` of `--warmup + --steps` steps without validation, logger or
checkpoints; the steps after the warm-up are timed. Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["model.config.self_condition=true", "data.num_workers=0", "logger=none", "export=false"]


def worker(args: argparse.Namespace) -> None:
    """One timed run of this process's speechtrain (the tree on PYTHONPATH); prints the steps per second."""
    import speechtrain
    from speechtrain.train import build

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = speechtrain.compose("soundstorm_mini", *OVERRIDES, output_dir=out)
        L.seed_everything(0, verbose=False)
        task, datamodule = build(cfg)
        forwards, forward = [], task.model.forward
        task.model.forward = lambda *a, **k: forwards.append(1) or forward(*a, **k)  # self-conditioning adds one
        timer = StepTimer(args.warmup, args.device)
        trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                            max_steps=args.warmup + args.steps, max_epochs=-1, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            use_distributed_sampler=False, callbacks=[timer], default_root_dir=out)
        trainer.fit(task, datamodule)
    print(json.dumps({"steps_per_s": args.steps / timer.seconds, "forwards": len(forwards),
                      "code": speechtrain.__file__}))


class StepTimer(L.Callback):
    """Seconds from the end of step `warmup` to the end of training (device work included)."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.seconds = None

    def _now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.global_step == self.warmup:
            self.start = self._now()

    def on_train_end(self, *_: object) -> None:
        self.seconds = self._now() - self.start


def run_tree(tree: Path, args: argparse.Namespace) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    command = [sys.executable, str(REPO / "bench" / "soundstorm_syncs.py"), "--worker", "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    result = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{tree}: the timed run failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if not measured["code"].startswith(str(tree)):
        sys.exit(f"{tree}: imported {measured['code']}, not the tree's own speechtrain")
    return measured["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the commit to compare with (a git revision of this repository)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not args.before:
        parser.error("--before REV is required")
    before_sha = subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "--short", args.before], text=True)
    after_sha = subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], text=True)
    with tempfile.TemporaryDirectory() as scratch:
        before = Path(scratch) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before], check=True,
                       capture_output=True)
        try:
            trees = {f"before ({before_sha.strip()})": before, f"after ({after_sha.strip()}, working tree)": REPO}
            rates: dict[str, list[float]] = {name: [] for name in trees}
            for round_index in range(args.rounds):
                order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
                for name in order:
                    rates[name].append(run_tree(trees[name], args))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], check=False)
    print(f"soundstorm_mini training steps/s, {args.device}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), {args.steps} steps after {args.warmup}, {args.rounds} rounds\n")
    print("| code | steps/s (median) | rounds |")
    print("|---|---:|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
