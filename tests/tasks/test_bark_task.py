import functools
import time

import pytest
import torch

from speechtrain.data.bark_data import BarkCoarseCollator, BarkFineCollator, BarkSemanticCollator
from speechtrain.data.token_shards import TokenizedUtterance
from speechtrain.layers.lora import LoRALinear
from speechtrain.models.registry import get_family
from speechtrain.tasks.bark import BarkTask
from speechtrain.tasks.checkpointing import LORA_CHECKPOINT_KEY, PRETRAINED_FILES_KEY, model_state_dict


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from more threads, and on a shared machine the extra ones spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SIZES = {"semantic": dict(input_vocab_size=129_600, output_vocab_size=10_048),
         "coarse_acoustics": dict(input_vocab_size=12_096, output_vocab_size=12_096),
         "fine_acoustics": dict(input_vocab_size=1056, output_vocab_size=1056)}


class WordTokenizer:
    """One id per word, from a fixed list."""

    words = "the cat sleeps by warm window we have three red apples today".split()

    def encode(self, text):
        return [self.words.index(word) for word in text.lower().strip(".").split()]

    def __len__(self):
        return len(self.words)


def tiny(kind, seed=0):
    torch.manual_seed(seed)
    return get_family(kind).build(dict(**SIZES[kind], hidden_size=32, num_layers=1, num_heads=2, block_size=1024))


def utterances(count=2, frames=45, seed=0):
    generator = torch.Generator().manual_seed(seed)
    texts = ["The cat sleeps by the warm window.", "We have three red apples today."]
    return [TokenizedUtterance(f"u{i}", texts[i % 2], None, (frames - 10 * i) / 75,
                               torch.randint(0, 1024, (frames - 10 * i, 8), generator=generator),
                               torch.randint(0, 100, ((frames - 10 * i) * 2 // 3,), generator=generator))
            for i in range(count)]


COLLATORS = {"semantic": lambda: BarkSemanticCollator(WordTokenizer()), "coarse_acoustics": BarkCoarseCollator,
             "fine_acoustics": lambda: BarkFineCollator(seed=0)}
ADAMW = functools.partial(torch.optim.AdamW, lr=1e-2)


@pytest.mark.parametrize("kind", ["semantic", "coarse_acoustics", "fine_acoustics"])
def test_each_kind_overfits_one_batch(kind):
    task = BarkTask(tiny(kind), ADAMW)
    batch = COLLATORS[kind]()(utterances())
    optimizer = ADAMW(task.model.parameters())
    losses = []
    start = time.perf_counter()
    for _ in range(12):
        loss, accuracy, tokens = task.model_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(tokens) == int((batch["labels"] != -100).sum()) and 0 <= float(accuracy) <= 1
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("kind", ["semantic", "coarse_acoustics"])
def test_padding_is_never_scored(kind):
    """The loss of a padded batch is the token-weighted mean of each row's own loss."""
    task = BarkTask(tiny(kind), ADAMW).eval()
    items = utterances()
    collator = COLLATORS[kind]()
    with torch.no_grad():
        batch_loss, _, _ = task.model_step(collator(items))
        parts = [task.model_step(collator([item])) for item in items]
    total = sum(loss * tokens for loss, _, tokens in parts) / sum(tokens for _, _, tokens in parts)
    assert collator(items)["attention_mask"].min() == 0  # there is padding
    assert abs(batch_loss - total) < 1e-5


def lora_task(kind="coarse_acoustics"):
    return BarkTask(tiny(kind), ADAMW, lora={"rank": 4, "alpha": 8, "targets": ["att_proj", "out_proj"]})


def test_lora_trains_the_adapters_and_checkpoints_a_plain_model():
    task = lora_task()
    plain_keys = set(tiny("coarse_acoustics").state_dict())
    trainable = [name for name, p in task.model.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith((".lora_a", ".lora_b")) for name in trainable)
    frozen = {name: value.clone() for name, value in task.model.state_dict().items() if "lora" not in name}
    batch = BarkCoarseCollator()(utterances())
    optimizer = ADAMW([p for p in task.model.parameters() if p.requires_grad])
    for _ in range(4):
        loss, _, _ = task.model_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(task.model.state_dict()[name], value) for name, value in frozen.items())

    checkpoint = {"state_dict": {f"model.{k}": v.clone() for k, v in task.model.state_dict().items()}}
    task.on_save_checkpoint(checkpoint)
    assert set(model_state_dict(checkpoint)) == plain_keys and b"coarse_acoustics" in \
        checkpoint[PRETRAINED_FILES_KEY]["config.json"]
    coarse = get_family("coarse_acoustics")
    exported = coarse.model_from_hf_config({"model_type": "coarse_acoustics",
                                            **tiny("coarse_acoustics").config.to_hf_dict()})
    exported.load_state_dict(model_state_dict(checkpoint))  # what speechtrain-export does
    task.model.eval()
    ids = batch["input_ids"][:1, :300]
    with torch.no_grad():
        assert (exported.eval()(ids)[0] - task.model(ids)[0]).abs().max() < 1e-5

    resumed = lora_task()
    resumed.on_load_checkpoint(checkpoint)  # Lightning then loads checkpoint["state_dict"] strictly
    resumed.load_state_dict(checkpoint["state_dict"])
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in task.state_dict().items())
    adapted = ("attn.att_proj", "attn.out_proj", "mlp.out_proj")  # "out_proj" matches the MLP's too
    assert set(checkpoint[LORA_CHECKPOINT_KEY]) == {f"model.layers.0.{layer}.{key}" for layer in adapted
                                                    for key in ("weight", "lora_a", "lora_b")}
    with pytest.raises(ValueError, match="trained with LoRA adapters: resume it with the same task.lora"):
        BarkTask(tiny("coarse_acoustics"), ADAMW).on_load_checkpoint(checkpoint)

    task.on_fit_end()  # the entry point exports task.model: merged
    assert not any(isinstance(m, LoRALinear) for m in task.model.modules())
    assert set(task.model.state_dict()) == plain_keys


def test_bad_lora_options_are_refused():
    with pytest.raises(ValueError, match=r"task.lora=\{'rank': 4, 'targets': \['att_proj'\], 'ranks': 2\}.*unknown: "
                                         r"\['ranks'\]"):
        BarkTask(tiny("fine_acoustics"), ADAMW, lora={"rank": 4, "targets": ["att_proj"], "ranks": 2})
    with pytest.raises(ValueError, match="targets required"):
        BarkTask(tiny("fine_acoustics"), ADAMW, lora={"rank": 4})
