"""Long runs: a time limit, a time-based last.ckpt, a checkpoint on SIGTERM, averaging the last checkpoints, and a
SLURM preemption (SIGUSR1) whose checkpoint the resume picks."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from test_resume import COMMON, REPO_DIR, TESTS_DIR, final_weights

from speechtrain.cli.average import average_checkpoints, average_state_dicts
from speechtrain.cli.export import export_checkpoint
from speechtrain.errors import CheckpointError
from speechtrain.hub import load_bundle
from speechtrain.train import _resolve_ckpt_path, train

# A 50 k-parameter Whisper, one training and one validation batch an epoch.
TINY = ["recipe=whisper_mini", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
        "task.max_new_tokens=4", "model.config.d_model=32", "model.config.encoder_layers=1",
        "model.config.decoder_layers=1", "model.config.encoder_ffn_dim=64", "model.config.decoder_ffn_dim=64",
        "data.max_batch_seconds=8", "trainer.check_val_every_n_epoch=1", "export=false", "logger=none",
        "~callbacks.learning_rate_monitor"]


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_max_time_stops_the_run_and_leaves_a_checkpoint(compose, tmp_path):
    # 100000 epochs take far longer than 2 s: only the time limit can end this run
    train(compose(*TINY, "trainer.max_epochs=100000", "+trainer.max_time=00:00:00:02", output_dir=tmp_path))
    checkpoint = load(tmp_path / "checkpoints" / "last.ckpt")
    assert 0 < checkpoint["epoch"] < 100000 - 1
    assert checkpoint["callbacks"]["Timer"]["time_elapsed"]["train"] >= 2


def test_time_checkpoint_writes_last_ckpt_mid_epoch(compose, tmp_path):
    # no validation-time checkpoint: every last.ckpt comes from the time-based one (an interval of 0: every batch)
    train(compose(*TINY, "trainer.max_steps=2", "trainer.limit_train_batches=3", "~callbacks.model_checkpoint",
                  "callbacks.time_checkpoint.train_time_interval.minutes=0", output_dir=tmp_path))
    checkpoint = load(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 2  # mid-epoch: 2 of 3 batches


class SignalAt(L.Callback):
    """Sends `signals` (names, one per step) to its own process after the training batch that reaches
    `step`, `step + 1`, ...: a preemption notice (SIGUSR1 from SLURM, SIGTERM) and then, say, the kill; only on
    global rank `rank` when one is given."""

    def __init__(self, step: int, signals: list[str], rank: int | None = None) -> None:
        self.step, self.signals, self.rank = step, list(signals), rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        index = trainer.global_step - self.step
        if 0 <= index < len(self.signals) and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), getattr(signal, self.signals[index]))


def test_sigterm_leaves_a_checkpoint_that_the_resume_picks(compose, tmp_path):
    overrides = [*TINY, "trainer.max_steps=3", "trainer.limit_train_batches=3"]
    cfg = compose(*overrides, "+callbacks.sigterm._target_=test_long_runs.SignalAt", "+callbacks.sigterm.step=2",
                  "+callbacks.sigterm.signals=[SIGTERM]", output_dir=tmp_path)
    with pytest.raises(SystemExit):  # Lightning raises SIGTERMException after the batch
        train(cfg)
    checkpoint_path = tmp_path / "checkpoints" / "on_exception.ckpt"
    assert load(checkpoint_path)["global_step"] == 2
    assert _resolve_ckpt_path(OmegaConf.create({"ckpt_path": "last"}), tmp_path) == str(checkpoint_path)


def test_averaged_checkpoint_is_the_element_wise_mean_and_exports(compose, tmp_path):
    train(compose(*TINY, "trainer.max_epochs=3", "callbacks.model_checkpoint.save_top_k=3", output_dir=tmp_path))
    paths = sorted((tmp_path / "checkpoints").glob("epoch*.ckpt"))
    assert len(paths) == 3  # top-k above 1 keeps one checkpoint an epoch here
    averaged = average_checkpoints(paths, tmp_path / "averaged.ckpt")
    states = [load(path)["state_dict"] for path in paths]
    result = torch.load(averaged, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in result and result["global_step"] == load(paths[-1])["global_step"]
    floats = [key for key, tensor in states[0].items() if tensor.is_floating_point()]
    assert any(not torch.equal(states[0][key], states[-1][key]) for key in floats)  # the weights did change
    for key in floats:
        torch.testing.assert_close(result["state_dict"][key], sum(state[key] for state in states) / 3)

    folder = export_checkpoint(averaged, tmp_path / "hf")
    model = load_bundle(folder, {"attn_implementation": "eager"})[0]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, result["state_dict"][f"model.{name}"])


def test_averaging_takes_integer_tensors_from_the_last_and_refuses_different_models():
    first = {"w": torch.tensor([1.0, 2.0]), "count": torch.tensor(3)}
    last = {"w": torch.tensor([3.0, 6.0], dtype=torch.float32), "count": torch.tensor(7)}
    averaged = average_state_dicts([first, last], ["a.ckpt", "b.ckpt"])
    assert torch.equal(averaged["w"], torch.tensor([2.0, 4.0])) and averaged["count"].item() == 7
    with pytest.raises(CheckpointError, match="a.ckpt: w has shape"):
        average_state_dicts([{"w": torch.zeros(3), "count": first["count"]}, last], ["a.ckpt", "b.ckpt"])
    with pytest.raises(CheckpointError, match="hold different weights"):
        average_state_dicts([{"w": first["w"]}, last], ["a.ckpt", "b.ckpt"])


# Lightning takes a process with these variables for one SLURM task and installs its SIGUSR1 handler (auto-requeue)
SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "speechtrain", "SLURM_JOB_ID": "1", "SLURM_NODELIST": "localhost",
              "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def test_slurm_preemption_checkpoint_is_the_one_the_resume_picks(compose, tmp_path):
    """Single process: SIGUSR1 mid-epoch 1 (after step 4) saves hpc_ckpt_1.ckpt at the next batch end (step 5, newer
    than epoch 0's last.ckpt) and stops the run; `ckpt_path=last` resumes from the hpc checkpoint and ends with the
    uninterrupted run's weights."""
    overrides = [*TINY, "trainer.limit_train_batches=3", "trainer.max_steps=7", "task.warmup_steps=2",
                 *[o for o in COMMON if o not in TINY and "every_n_train_steps" not in o],  # last.ckpt at validation
                 f"cpu_threads={torch.get_num_threads()}"]  # the preempted run is a fresh process: as many threads
    train(compose(*overrides, output_dir=tmp_path / "whole"))
    whole = final_weights(tmp_path / "whole")

    preempted = tmp_path / "preempted"
    command = [sys.executable, str(REPO_DIR / "train.py"), *overrides, f"hydra.run.dir={preempted}",
               "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false", "~callbacks.progress_bar",
               "+callbacks.preempt._target_=test_long_runs.SignalAt", "+callbacks.preempt.step=4",
               "+callbacks.preempt.signals=[SIGUSR1]"]
    environment = {**os.environ, **SLURM_TASK,
                   "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "preempted" in result.stdout + result.stderr
    assert load(preempted / "hpc_ckpt_1.ckpt")["global_step"] == 5  # mid-epoch 1 (3 batches an epoch)
    assert load(preempted / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert _resolve_ckpt_path(OmegaConf.create({"ckpt_path": "last"}), preempted) == str(preempted / "hpc_ckpt_1.ckpt")

    train(compose(*overrides, "ckpt_path=last", output_dir=preempted))
    resumed = final_weights(preempted)
    assert whole.keys() == resumed.keys()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, different[:5]


def run_slurm_tasks(run_dir: Path, overrides: list[str], tasks: int = 2) -> list[subprocess.CompletedProcess]:
    """`python train.py trainer=ddp_cpu` started once per rank as `srun` would (SLURM's variables, one task each),
    so that Lightning's SLURMEnvironment takes the ranks and installs the auto-requeue handling."""
    command = [sys.executable, str(REPO_DIR / "train.py"), "trainer=ddp_cpu", f"trainer.devices={tasks}", *overrides,
               f"hydra.run.dir={run_dir}", "+trainer.enable_progress_bar=false", "~callbacks.progress_bar"]
    with socket.socket() as probe:  # a free port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for rank in range(tasks):
        environment = {**os.environ, **SLURM_TASK, "SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks),
                       "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "MASTER_PORT": str(port),
                       "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
        processes.append(subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_slurm_preemption_of_two_ranks_saves_together_and_resumes_to_the_uninterrupted_weights(tmp_path):
    """Two SLURM tasks; only rank 1 gets SIGUSR1 after step 4. Both ranks agree at the next batch end, save
    hpc_ckpt_1.ckpt (step 5) and stop (nothing exported); the resume picks it and ends where an uninterrupted
    two-rank run ends."""
    overrides = [*TINY, "trainer.limit_train_batches=3", "trainer.max_steps=7", "task.warmup_steps=2",
                 *[o for o in COMMON if o not in TINY and "every_n_train_steps" not in o], "cpu_threads=1"]
    for result in run_slurm_tasks(tmp_path / "whole", overrides):
        assert result.returncode == 0, result.stderr[-3000:]
    whole = final_weights(tmp_path / "whole")

    preempted = tmp_path / "preempted"
    signalled = ["+callbacks.preempt._target_=test_long_runs.SignalAt", "+callbacks.preempt.step=4",
                 "+callbacks.preempt.signals=[SIGUSR1]", "+callbacks.preempt.rank=1"]
    for result in run_slurm_tasks(preempted, [*overrides, *signalled]):
        assert result.returncode == 0, result.stderr[-3000:]
    assert load(preempted / "hpc_ckpt_1.ckpt")["global_step"] == 5
    assert load(preempted / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert not (preempted / "exported").exists() and not (preempted / "metrics.json").exists()

    results = run_slurm_tasks(preempted, [*overrides, "ckpt_path=last"])
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "resuming from " + str(preempted / "hpc_ckpt_1.ckpt") in result.stdout + result.stderr
    resumed = final_weights(preempted)
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert whole.keys() == resumed.keys() and not different, different[:5]


def test_average_command_says_what_is_wrong(tmp_path, capsys):
    from speechtrain.cli.average import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt"), "-o", str(tmp_path / "out.ckpt")])
    assert exit_info.value.code == 1
    assert f"speechtrain-average: error: checkpoint {tmp_path / 'a.ckpt'} not found" in capsys.readouterr().err
