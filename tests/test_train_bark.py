"""Bark end to end: the mini recipes of the three sub-models, export into transformers, LoRA fine-tuning through
a fine-tuning recipe, and text-to-audio generation from the exported folders."""

import pytest
import soundfile
import torch
from safetensors.torch import load_file

from speechtrain.cli.export import export_checkpoint
from speechtrain.hub import load_bundle
from speechtrain.models.bark.cli import main as bark_generate_main
from speechtrain.models.bark.cli import voice_main as bark_voice_main
from speechtrain.train import BUNDLED_DATA_DIR, train

transformers = pytest.importorskip("transformers")

SHORT = ["trainer.max_epochs=2", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "logger=csv",
         "data.max_batch_seconds=6"]
RECIPES = {"semantic": "bark_mini", "coarse_acoustics": "bark_mini_coarse", "fine_acoustics": "bark_mini_fine"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(compose, tmp_path_factory):
    """Each mini recipe trained for a few steps: {kind: (run folder, metrics)}."""
    results = {}
    for kind, recipe in RECIPES.items():
        out = tmp_path_factory.mktemp(recipe)
        results[kind] = out, train(compose(f"recipe={recipe}", *SHORT, output_dir=out))
    return results


def test_mini_recipes_train_with_finite_losses(runs):
    for kind, (_, metrics) in runs.items():
        assert {"train/loss", "val/loss", "val/accuracy", "train/tokens"} <= set(metrics), kind
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), (kind, metrics)
        assert metrics["train/tokens"] > 0


@pytest.mark.parametrize("kind", list(RECIPES))
def test_export_loads_into_transformers_with_the_same_logits(runs, kind):
    folder = runs[kind][0] / "exported"
    ours, tokenizer, _ = load_bundle(folder)
    classes = {"semantic": transformers.BarkSemanticModel, "coarse_acoustics": transformers.BarkCoarseModel,
               "fine_acoustics": transformers.BarkFineModel}
    theirs = classes[kind].from_pretrained(folder).eval()
    ours.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if kind == "fine_acoustics":
            ids = torch.randint(0, 1025, (2, 64, 8), generator=generator)
            expected, actual = theirs(codebook_idx=3, input_ids=ids).logits, ours(3, ids)
        else:
            ids = torch.randint(0, 10_000, (2, 40), generator=generator)
            expected, actual = theirs(input_ids=ids).logits, ours(ids)[0]
    assert (expected - actual).abs().max() < 1e-4
    if kind == "semantic":  # the WordPiece vocabulary travels with the semantic model
        text = "The cat sleeps by the warm window."
        bert = transformers.BertTokenizer.from_pretrained(folder)
        assert bert(text, add_special_tokens=False).input_ids == tokenizer.encode(text)
    else:
        assert tokenizer is None and not (folder / "vocab.txt").exists()


def test_lora_finetune_recipe_exports_a_plain_model(runs, compose, tmp_path):
    pretrained = runs["coarse_acoustics"][0] / "exported"
    # monitor=null: last.ckpt at every validation, not only at an improving one (Lightning 2.6's save_last), so
    # that it holds the final weights whatever the validation loss did
    # the mini run's own k-means ids, not Bark's: the run that made this folder learnt these ids, so it is told
    cfg = compose("recipe=bark_coarse", f"model.pretrained={pretrained}", "data.allow_foreign_semantic_ids=true",
                  "task.lora={rank:4,alpha:8,targets:[att_proj]}", "data.windows_per_utterance=1",
                  "task.optimizer.lr=1e-2", "task.warmup_steps=0", "callbacks.model_checkpoint.monitor=null", *SHORT,
                  output_dir=tmp_path)
    train(cfg)
    before, after = load_file(pretrained / "model.safetensors"), load_file(tmp_path / "exported" / "model.safetensors")
    assert before.keys() == after.keys()  # plain transformers names: no adapters
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == {f"layers.{i}.attn.att_proj.weight" for i in range(2)}  # only the adapted layers moved

    checkpoint = export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "from_checkpoint")
    theirs = transformers.BarkCoarseModel.from_pretrained(checkpoint).eval()
    assert torch.equal(theirs.layers[0].attn.att_proj.weight, after["layers.0.attn.att_proj.weight"])


def test_generate_command_writes_audio_from_the_three_folders(runs, tmp_path, capsys):
    folders = {kind: str(run / "exported") for kind, (run, _) in runs.items()}
    out = tmp_path / "speech.wav"
    bark_generate_main(["--semantic", folders["semantic"], "--coarse", folders["coarse_acoustics"], "--fine",
                        folders["fine_acoustics"], "--text", "The cat sleeps.", "--out", str(out), "--seed", "3",
                        "--max-semantic-tokens", "10"])
    audio, rate = soundfile.read(out)
    assert rate == 24_000 and 0 < len(audio) <= 10 / 49.9 * 24_000 + 320 and abs(audio).max() > 0
    assert "speech.wav" in capsys.readouterr().out
    voice = tmp_path / "voice.npz"  # the voice of a mini utterance, which these runs trained on
    tokens = str(BUNDLED_DATA_DIR / "mini_tokens")
    bark_voice_main(["--tokens", tokens, "--utterance", "mini_0003", "--out", str(voice)])
    bark_generate_main(["--semantic", folders["semantic"], "--coarse", folders["coarse_acoustics"], "--fine",
                        folders["fine_acoustics"], "--text", "The cat sleeps.", "--out", str(tmp_path / "voiced.wav"),
                        "--seed", "3", "--max-semantic-tokens", "10", "--voice", str(voice)])
    voiced, _ = soundfile.read(tmp_path / "voiced.wav")
    assert 0 < len(voiced) and (len(voiced) != len(audio) or not (voiced == audio).all())  # the preset conditions it
    with pytest.raises(SystemExit):  # a coarse folder given as the semantic model
        bark_generate_main(["--semantic", folders["coarse_acoustics"], "--coarse", folders["coarse_acoustics"],
                            "--fine", folders["fine_acoustics"], "--tokenizer", folders["semantic"], "--text", "x",
                            "--out", str(tmp_path / "x.wav")])
    assert "holds a 'coarse_acoustics' model, expected 'semantic'" in capsys.readouterr().err
