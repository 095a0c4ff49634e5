"""`speechtrain-average CKPT... -o OUT.ckpt`: the element-wise mean of the weights of several checkpoints of one run.

Averaging the last few checkpoints (fairseq's `average_checkpoints.py`) often gives a better model than any one of
them. Floating-point tensors are averaged (in float64, then cast back); integer and boolean tensors (step counters,
`num_batches_tracked`, index buffers) are taken from the last checkpoint given. The output is the last checkpoint
with the averaged `state_dict`, without optimizer and scheduler states (an average is for export and evaluation, not
for resuming): `speechtrain-export OUT.ckpt OUT_DIR` exports it. Checkpoints are loaded with `weights_only=True`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from speechtrain.errors import CheckpointError

# What the averaged checkpoint does not carry over from the last one: it cannot resume training.
NOT_AVERAGED_KEYS = ("optimizer_states", "lr_schedulers")


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found (a folder of FSDP shards cannot be averaged: save "
                              "with strategy.save_distributed_checkpoint=false)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} has no 'state_dict': it is not a Lightning checkpoint")
    return checkpoint


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]], names: Sequence[str]
                        ) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; other tensors from the last state dict.
    `names` (one per state dict) go into the error when the keys or shapes differ."""
    last = state_dicts[-1]
    for state, name in zip(state_dicts, names, strict=True):
        if state.keys() != last.keys():
            differing = sorted(state.keys() ^ last.keys())[:5]
            raise CheckpointError(f"{name} and {names[-1]} hold different weights ({differing}): average "
                                  "checkpoints of one run only")
        for key, tensor in state.items():
            if tensor.shape != last[key].shape:
                raise CheckpointError(f"{name}: {key} has shape {tuple(tensor.shape)}, {names[-1]} "
                                      f"{tuple(last[key].shape)}: average checkpoints of one run only")
    averaged = {}
    for key, tensor in last.items():
        if tensor.is_floating_point():
            total = sum(state[key].to(torch.float64) for state in state_dicts)
            averaged[key] = (total / len(state_dicts)).to(tensor.dtype)
        else:
            averaged[key] = tensor.clone()
    return averaged


def average_checkpoints(paths: Sequence[str | Path], out_path: str | Path) -> Path:
    """Writes to `out_path` the last of `paths` with the mean of all their weights (see the module docstring)."""
    if len(paths) < 2:
        raise CheckpointError(f"give at least two checkpoints to average, got {len(paths)}")
    paths, out_path = [Path(p) for p in paths], Path(out_path)
    checkpoints = [_load(path) for path in paths]
    averaged = {key: value for key, value in checkpoints[-1].items() if key not in NOT_AVERAGED_KEYS}
    averaged["state_dict"] = average_state_dicts([c["state_dict"] for c in checkpoints], [str(p) for p in paths])
    averaged["averaged_from"] = [str(path) for path in paths]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(averaged, out_path)
    return out_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="the .ckpt files to average, e.g. checkpoints/epoch*.ckpt")
    parser.add_argument("-o", "--output", required=True, help="the averaged checkpoint to write")
    args = parser.parse_args(argv)
    try:
        out = average_checkpoints(args.checkpoints, args.output)
    except CheckpointError as exc:
        parser.exit(1, f"speechtrain-average: error: {exc}\n")
    print(f"averaged {len(args.checkpoints)} checkpoints into {out}")


if __name__ == "__main__":
    main()
