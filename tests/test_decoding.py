import itertools

import pytest
import torch

from speechtrain.decoding import beam_search, greedy_decode, reorder_cache
from speechtrain.models.whisper import WhisperConfig, WhisperForConditionalGeneration

transformers = pytest.importorskip("transformers")

PREFIX, EOS, MAX_NEW = [2, 5], 11, 15
SUPPRESS, BEGIN_SUPPRESS = [7, 8], [9]


@pytest.fixture(scope="module")
def whisper_pair():
    """transformers' Whisper (random, vocab 12, weights at std 1 so tokens vary) and ours with its weights.
    Token 11 is used as the end token: it is likely enough that rows end at different steps."""
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=12, num_mel_bins=16, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=50, max_target_positions=40, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        decoder_start_token_id=2, suppress_tokens=None, begin_suppress_tokens=None, init_std=1.0,
    )
    hf = transformers.WhisperForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()
    hf.generation_config = transformers.GenerationConfig(decoder_start_token_id=2, eos_token_id=EOS, pad_token_id=0)
    ours = WhisperForConditionalGeneration(WhisperConfig.from_hf_dict(config.to_dict())).eval()
    ours.load_state_dict(hf.state_dict())
    features = torch.randn(4, 16, 100, generator=torch.Generator().manual_seed(0))
    return hf, ours, features


def hf_generate(hf, features, **kwargs) -> list[list[int]]:
    """transformers' generic `GenerationMixin.generate` (Whisper's own `generate` adds language detection and
    timestamp logic that a random model has no configuration for), cut after the first end token."""
    from transformers.generation.utils import GenerationMixin

    out = GenerationMixin.generate(
        hf, input_features=features, decoder_input_ids=torch.tensor([PREFIX] * len(features)),
        max_new_tokens=MAX_NEW, do_sample=False, suppress_tokens=SUPPRESS, begin_suppress_tokens=BEGIN_SUPPRESS,
        **kwargs,
    )
    rows = []
    for row in out.tolist():
        generated = row[len(PREFIX):]
        rows.append(PREFIX + (generated[: generated.index(EOS) + 1] if EOS in generated else generated))
    return rows


def test_greedy_matches_transformers_generate(whisper_pair):
    hf, ours, features = whisper_pair
    expected = hf_generate(hf, features, num_beams=1)
    got = greedy_decode(ours, features, None, PREFIX, EOS, MAX_NEW, SUPPRESS, BEGIN_SUPPRESS)
    print("greedy", got)
    assert got == expected
    assert len({len(row) for row in got}) > 1, "rows should end at different steps"
    assert all(row[:2] == PREFIX for row in got)
    assert not any(token in SUPPRESS for row in got for token in row)


@pytest.mark.parametrize("num_beams,length_penalty", [(3, 1.0), (4, 2.0)])
def test_beam_search_matches_transformers_generate(whisper_pair, num_beams, length_penalty):
    hf, ours, features = whisper_pair
    expected = hf_generate(hf, features, num_beams=num_beams, length_penalty=length_penalty)
    got = beam_search(ours, features, None, PREFIX, EOS, MAX_NEW, num_beams=num_beams,
                      length_penalty=length_penalty, suppress_tokens=SUPPRESS, begin_suppress_tokens=BEGIN_SUPPRESS)
    print(f"beam {num_beams} lp {length_penalty}", got)
    assert got == expected
    greedy = greedy_decode(ours, features, None, PREFIX, EOS, MAX_NEW, SUPPRESS, BEGIN_SUPPRESS)
    assert got != greedy, "the beam should find something greedy does not, or this test proves little"


class OnDevice(torch.Tensor):
    """Stands for a tensor on an accelerator: each read of its values into Python or onto the host (what makes the
    host wait for a GPU) is counted in `host_reads` and gives an ordinary tensor or number."""

    host_reads = 0
    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in cls.READS or (name == "to" and "cpu" in map(str, [*args[1:], *kwargs.values()])):
            cls.host_reads += 1
            with torch._C.DisableTorchFunctionSubclass():
                return on_host(func(*args, **kwargs))  # `cpu()` of a CPU tensor is the tensor itself
        return super().__torch_function__(func, types, args, kwargs)


def on_device(value):
    if isinstance(value, torch.Tensor):
        return value.as_subclass(OnDevice)
    return type(value)(on_device(v) for v in value) if isinstance(value, list | tuple) else value


def on_host(value):
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor)
    return type(value)(on_host(v) for v in value) if isinstance(value, list | tuple) else value


class AcceleratorModel:
    """A model whose outputs (encoder states, logits, cache) are `OnDevice`; its own computation is not counted."""

    def __init__(self, model):
        self.model, self.decode_calls = model, 0

    def encode(self, features, attention_mask=None):
        return on_device(self.model.encode(on_host(features), on_host(attention_mask)))

    def decode(self, ids, encoder_hidden_states, encoder_attention_mask=None, cache=None):
        self.decode_calls += 1
        return on_device(self.model.decode(on_host(ids), on_host(encoder_hidden_states),
                                           on_host(encoder_attention_mask), on_host(cache)))


def test_beam_search_reads_the_device_once_per_step(whisper_pair, monkeypatch):
    """B x K host syncs per step (element reads of device tensors) made beam search on a GPU wait for the device
    over and over; now one copy per decoder step carries what the host needs. The result is unchanged."""
    _, ours, features = whisper_pair
    model = AcceleratorModel(ours)
    monkeypatch.setattr(OnDevice, "host_reads", 0)
    got = beam_search(model, features, None, PREFIX, EOS, MAX_NEW, num_beams=4, suppress_tokens=SUPPRESS,
                      begin_suppress_tokens=BEGIN_SUPPRESS)
    assert got == beam_search(ours, features, None, PREFIX, EOS, MAX_NEW, num_beams=4, suppress_tokens=SUPPRESS,
                              begin_suppress_tokens=BEGIN_SUPPRESS)
    print("beam: host reads", OnDevice.host_reads, "decoder steps", model.decode_calls)
    assert model.decode_calls > 3 and 0 < OnDevice.host_reads <= model.decode_calls
    monkeypatch.setattr(OnDevice, "host_reads", 0)
    model.decode_calls = 0
    greedy_decode(model, features, None, PREFIX, EOS, MAX_NEW, SUPPRESS, BEGIN_SUPPRESS)
    assert OnDevice.host_reads <= model.decode_calls + 1  # the all-finished check per step, the tokens at the end


class ToyModel:
    """Next-token logits are a fixed random function of (utterance, history); the cache is the history
    `[batch, time]`, so a wrong beam reordering changes the results. The end token (3) is made unlikely so
    that the best hypotheses are long."""

    vocab, eos = 4, 3

    def logits(self, utterance: int, history: list[int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(hash((utterance, *history)) % 2**62)
        logits = 2 * torch.randn(self.vocab, generator=generator)
        logits[self.eos] -= 2.0
        return logits

    def encode(self, features, attention_mask=None):
        return features  # [B, 1] utterance numbers

    def decode(self, ids, encoder_hidden_states, encoder_attention_mask=None, cache=None):
        history = ids if cache is None else torch.cat([cache, ids], dim=1)
        past = history.shape[1] - ids.shape[1]
        logits = [
            torch.stack([self.logits(int(utterance), row[: past + t + 1]) for t in range(ids.shape[1])])
            for utterance, row in zip(encoder_hidden_states[:, 0], history.tolist(), strict=True)
        ]
        return torch.stack(logits), history


def exhaustive_best(model: ToyModel, utterance: int, prefix: list[int], eos: int, max_new: int) -> list[int]:
    """Highest total log-probability over every continuation that ends with `eos` or at `max_new` tokens."""
    best_score, best = float("-inf"), None
    for length in range(1, max_new + 1):
        for generated in itertools.product(range(model.vocab), repeat=length):
            if eos in generated[:-1] or (length < max_new and generated[-1] != eos):
                continue
            history, score = list(prefix), 0.0
            for token in generated:
                score += model.logits(utterance, history).log_softmax(-1)[token].item()
                history.append(token)
            if score > best_score:
                best_score, best = score, history
    return best


def test_wide_beam_equals_exhaustive_search():
    model, prefix, max_new = ToyModel(), [0], 5
    features = torch.arange(8.0)[:, None]
    # length_penalty=0 scores by total log-probability, which only falls with length, so a beam wider than
    # every live hypothesis (3 ** 4 = 81) is exact
    got = beam_search(model, features, None, prefix, model.eos, max_new, num_beams=96, length_penalty=0.0)
    expected = [exhaustive_best(model, utterance, prefix, model.eos, max_new) for utterance in range(8)]
    print("beam", got, "exhaustive", expected)
    assert got == expected
    assert sum(len(row) > 3 for row in expected) >= 4, "most best hypotheses should need the cache"


def test_reorder_cache_selects_rows_of_nested_tensors():
    cache = [(torch.arange(3)[:, None] * 10, torch.arange(3)), (torch.arange(3), torch.arange(3) + 1)]
    index = torch.tensor([2, 2, 0])
    reordered = reorder_cache(cache, index)
    assert isinstance(reordered, list) and isinstance(reordered[0], tuple)
    assert reordered[0][0].flatten().tolist() == [20, 20, 0] and reordered[1][1].tolist() == [3, 3, 1]


def test_bad_arguments_raise():
    model, features = ToyModel(), torch.zeros(1, 1)
    with pytest.raises(ValueError, match="prefix_ids"):
        greedy_decode(model, features, None, [], 3, 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        beam_search(model, features, None, [0], 3, 0)
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, features, None, [0], 3, 4, num_beams=0)


def test_given_encoder_states_are_decoded_without_encoding_again(whisper_pair):
    """The ASR task's validation encodes once for its loss and hands the states to the search: the same tokens,
    and no second encoder pass."""
    _, ours, features = whisper_pair
    states = ours.encode(features)
    passes = []
    hook = ours.get_encoder().register_forward_hook(lambda module, args, output: passes.append(1))
    try:
        greedy = greedy_decode(ours, features, None, PREFIX, EOS, MAX_NEW, SUPPRESS, BEGIN_SUPPRESS,
                               encoder_hidden_states=states)
        beam = beam_search(ours, features, None, PREFIX, EOS, MAX_NEW, num_beams=3, suppress_tokens=SUPPRESS,
                           begin_suppress_tokens=BEGIN_SUPPRESS, encoder_hidden_states=states)
    finally:
        hook.remove()
    assert not passes
    assert greedy == greedy_decode(ours, features, None, PREFIX, EOS, MAX_NEW, SUPPRESS, BEGIN_SUPPRESS)
    assert beam == beam_search(ours, features, None, PREFIX, EOS, MAX_NEW, num_beams=3, suppress_tokens=SUPPRESS,
                               begin_suppress_tokens=BEGIN_SUPPRESS)
    with pytest.raises(ValueError, match="encoder_hidden_states has 3 rows but input_features 4"):
        greedy_decode(ours, features, None, PREFIX, EOS, MAX_NEW, encoder_hidden_states=states[:3])
