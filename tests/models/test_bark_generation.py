"""Bark generation and training layouts against transformers' `generate` of the same tiny random models."""

import pytest
import torch
from test_bark import hf_model, ours_from

from speechtrain.models.bark import (
    BarkGenerationConfig,
    CoarseGenerationConfig,
    SemanticGenerationConfig,
    generate_audio,
    generate_coarse,
    generate_fine,
    generate_semantic,
    layouts,
)

transformers = pytest.importorskip("transformers")
from transformers.models.bark.generation_configuration_bark import (  # noqa: E402
    BarkCoarseGenerationConfig,
    BarkFineGenerationConfig,
    BarkSemanticGenerationConfig,
)

TEXTS = [[101, 2002, 17, 5, 999, 3000, 42], [7, 8, 9]]


def record_calls(model):
    """Wraps `model.forward` (generation calls it directly or through `__call__`) to keep each call's arguments
    and logits."""
    calls, forward = [], model.forward

    def recording_forward(*args, **kwargs):
        output = forward(*args, **kwargs)
        copy = lambda value: value.clone() if isinstance(value, torch.Tensor) else value  # noqa: E731 (fine
        # generation writes into its input buffer after the call)
        calls.append((tuple(map(copy, args)), {key: copy(value) for key, value in kwargs.items()}, output.logits))
        return output

    model.forward = recording_forward
    return calls


def hf_semantic_generate(hf, texts, max_new_tokens, **kwargs):
    input_ids = torch.zeros(len(texts), 256, dtype=torch.long)
    mask = torch.zeros(len(texts), 256, dtype=torch.long)
    for row, text in enumerate(texts):  # what BarkProcessor builds: padded to 256 with an attention mask
        input_ids[row, : len(text)], mask[row, : len(text)] = torch.tensor(text), 1
    config = BarkSemanticGenerationConfig(max_new_tokens=max_new_tokens)
    return hf.generate(input_ids, semantic_generation_config=config, attention_mask=mask, **kwargs)


def test_greedy_semantic_equals_transformers_and_layout_gives_its_logits():
    hf = hf_model("semantic")
    ours = ours_from(hf)
    history = list(range(40, 340))  # longer than 256: both keep the last 256
    calls = record_calls(hf)
    with torch.no_grad():
        expected = hf_semantic_generate(hf, TEXTS, 24, history_prompt={"semantic_prompt": torch.tensor(history)})
    generated = generate_semantic(ours, TEXTS, history=history, max_new_tokens=24)
    assert torch.equal(generated, expected)
    assert len(set(generated[0].tolist())) > 5  # the random model does not just repeat one token

    step_logits = torch.stack([logits[:, -1] for _, _, logits in calls], dim=1)  # [B, steps, V]
    examples = [layouts.semantic_example(text, row.tolist(), history) for text, row in zip(TEXTS, generated)]
    batch = layouts.semantic_batch(examples)
    with torch.no_grad():
        logits, _ = ours(input_embeds=ours.embed_merged_context(batch["input_ids"]))
    scored = batch["labels"] != layouts.IGNORE_INDEX
    assert logits.shape[1] == batch["labels"].shape[1] == 256 + 1 + 24
    assert scored[:, :256].sum() == 0 and scored.sum() == 2 * 25  # 24 tokens + the end token per row
    assert (logits[:, 256:-1] - step_logits).abs().max() < 1e-4  # last scored position: the end token, not generated
    assert torch.equal(batch["labels"][:, 256:-1], generated) and (batch["labels"][:, -1] == 10_000).all()


def test_min_eos_p_stops_as_transformers():
    hf = hf_model("semantic", seed=3)
    ours = ours_from(hf)
    with torch.no_grad():  # the end-token probability of this random model stays below 6.5e-5 for 27 steps
        expected = hf_semantic_generate(hf, TEXTS, 30, min_eos_p=6.5e-5)
    generated = generate_semantic(ours, TEXTS, max_new_tokens=30, min_eos_p=6.5e-5)
    assert torch.equal(generated, expected)
    stops = [row.index(10_000) for row in generated.tolist()]
    assert 0 < min(stops) and max(stops) < 29, stops  # both rows stopped early, not on the first step
    assert (generated[0, stops[0]:] == 10_000).all()  # then repeat the end token


def coarse_codes(flat, config):
    pairs = torch.as_tensor(flat).view(-1, 2)
    return (pairs - torch.tensor([config.coarse_offset(0), config.coarse_offset(1)])).T  # [2, frames]


def test_greedy_coarse_equals_transformers_and_windows_are_its_prompts():
    # Bark's windows (60 new tokens after up to 630 earlier ones) scaled down to keep the test fast; the code
    # paths are the same: several windows, the history cut, the semantic window moving.
    hf_window = dict(sliding_window_len=30, max_coarse_history=90)
    config = BarkGenerationConfig(coarse=CoarseGenerationConfig(**hf_window))
    hf = hf_model("coarse_acoustics")
    ours = ours_from(hf)
    semantic = torch.randint(0, 10_000, (2, 62), generator=torch.Generator().manual_seed(5))
    semantic[1, 40:] = 10_000  # a shorter row, padded with the end token as semantic generation leaves it
    calls = record_calls(hf)
    with torch.no_grad():
        expected, expected_lengths = hf.generate(
            semantic.clone(), semantic_generation_config=BarkSemanticGenerationConfig(),
            coarse_generation_config=BarkCoarseGenerationConfig(**hf_window), return_output_lengths=True)
    generated, lengths = generate_coarse(ours, semantic, config)
    assert torch.equal(generated, expected) and torch.equal(lengths, expected_lengths.long())
    assert lengths.tolist() == [186, 120] and generated.shape[1] == 186  # 7 windows

    windows = layouts.coarse_windows(semantic[0].tolist(), coarse_codes(generated[0], config), config)
    prompts = [kwargs["input_ids"][0] for _, kwargs, _ in calls if kwargs["input_ids"].shape[1] > 1]
    assert len(windows) == len(prompts) == 7
    assert prompts[-1][257:].tolist() == generated[0, 180 - 90 : 180].tolist()  # the history is cut to 90
    batch = layouts.coarse_batch(windows, config)
    with torch.no_grad():
        logits, _ = ours(batch["input_ids"])
    step_logits = torch.stack([logits[0, -1] for _, _, logits in calls])  # [steps, V]
    scored = batch["labels"] != layouts.IGNORE_INDEX
    assert torch.equal(batch["labels"][scored], generated[0])
    assert (logits[scored] - step_logits).abs().max() < 1e-4
    for (input_ids, _), prompt in zip(windows, prompts):
        assert input_ids[: len(prompt)] == prompt.tolist()


def test_greedy_fine_equals_transformers_until_it_repredicts_an_overlap():
    frames = 1300  # two passes, the second one clamped to the end
    hf = hf_model("fine_acoustics")
    ours = ours_from(hf)
    codes = torch.randint(0, 1024, (1, frames, 2), generator=torch.Generator().manual_seed(frames))
    coarse_ids = (codes + torch.tensor([10_000, 11_024])).flatten(1)  # [B, frames * 2]
    configs = dict(semantic_generation_config=BarkSemanticGenerationConfig(),
                   coarse_generation_config=BarkCoarseGenerationConfig(),
                   fine_generation_config=BarkFineGenerationConfig())
    with torch.no_grad():
        expected = hf.generate(coarse_ids, **configs)
    generated = generate_fine(ours, coarse_ids)
    assert generated.shape == (1, 8, frames) and torch.equal(generated[:, :2], codes.transpose(1, 2))
    # transformers' second window (frames 276..1300) re-predicts frames 512..1024 and keeps them; ours keeps the
    # first window's predictions there and predicts only frames 1024..1300 in the second
    assert torch.equal(generated[..., :512], expected[..., :512])
    assert not torch.equal(generated[..., 512:1024], expected[..., 512:1024])


def record_fine_calls(model):
    """Wraps our fine model's `forward` to keep each call's `(codebook, input_ids, logits)`."""
    calls, forward = [], model.forward

    def recording_forward(codebook_idx, input_ids, *args):
        logits = forward(codebook_idx, input_ids, *args)
        calls.append((codebook_idx, input_ids.clone(), logits))  # generation writes into its buffer afterwards
        return logits

    model.forward = recording_forward
    return calls


@pytest.mark.parametrize("frames", [1500, 2000, 3000])
def test_every_fine_frame_generation_keeps_is_scored_by_training_in_the_same_context(frames):
    ours = ours_from(hf_model("fine_acoustics"))
    codes = torch.randint(0, 1024, (1, frames, 2), generator=torch.Generator().manual_seed(frames))
    calls = record_fine_calls(ours)
    generated = generate_fine(ours, (codes + torch.tensor([10_000, 11_024])).flatten(1))[0].T  # [frames, 8]
    windows = layouts.fine_windows(generated)
    assert [w.start for w in windows] == {1500: [0, 476], 2000: [0, 512, 976],
                                          3000: [0, 512, 1024, 1536, 1976]}[frames]
    rows = [window for window in windows for _ in range(6)]  # generation's order: window by window, book by book
    batch = layouts.fine_batch(rows, list(range(2, 8)) * len(windows))
    assert len(calls) == len(rows)
    with torch.no_grad():
        logits = ours(batch["codebook_idx"], batch["input_ids"])
    scored_times = torch.zeros(frames, 8, dtype=torch.long)  # how often training scores each frame and codebook
    for row, (window, (codebook, fed, generation_logits)) in enumerate(zip(rows, calls)):
        assert codebook == batch["codebook_idx"][row]
        assert torch.equal(batch["input_ids"][row], fed[0].long())  # the same context, frame by frame
        scored = (batch["labels"][row] != layouts.IGNORE_INDEX).nonzero()[:, 0]
        assert (logits[row] - generation_logits[0]).abs().max() < 1e-4
        # what generation kept of this call: greedy picks from these logits, and training's labels there
        assert torch.equal(generation_logits[0, scored, :1024].argmax(-1), generated[window.start + scored, codebook])
        assert torch.equal(batch["labels"][row, scored], generated[window.start + scored, codebook])
        scored_times[window.start + scored, codebook] += 1
    assert (scored_times[:, 2:] == 1).all() and (scored_times[:, :2] == 0).all()


@pytest.mark.parametrize("frames", [1024, 300])
def test_fine_windows_are_what_generation_feeds(frames):
    hf = hf_model("fine_acoustics")
    ours = ours_from(hf)
    codes = torch.randint(0, 1024, (1, frames, 2), generator=torch.Generator().manual_seed(7))
    calls = record_calls(hf)
    with torch.no_grad():
        generated = hf.generate((codes + torch.tensor([10_000, 11_024])).flatten(1),
                                semantic_generation_config=BarkSemanticGenerationConfig(),
                                coarse_generation_config=BarkCoarseGenerationConfig(),
                                fine_generation_config=BarkFineGenerationConfig())
    assert torch.equal(generate_fine(ours, (codes + torch.tensor([10_000, 11_024])).flatten(1)), generated)
    (window,) = layouts.fine_windows(generated[0].T)
    assert (window.new_from, window.new_to) == (0, frames)
    batch = layouts.fine_batch([window] * 6, list(range(2, 8)))
    with torch.no_grad():
        logits = ours(batch["codebook_idx"], batch["input_ids"])
    for row, (args, _, expected_logits) in enumerate(calls):
        codebook, fed = args
        assert codebook == row + 2
        scored = batch["labels"][row] != layouts.IGNORE_INDEX
        assert scored.sum() == frames
        # generation also writes predictions into the padding after the last frame; the frames themselves agree
        assert torch.equal(batch["input_ids"][row, :frames], fed[0, :frames].long())
        if frames == 1024 or codebook == 2:  # no padding, or no prediction in it yet: the whole input agrees
            assert torch.equal(batch["input_ids"][row], fed[0].long())
            assert (logits[row, scored] - expected_logits[0, scored]).abs().max() < 1e-4


def test_fine_windows_with_a_prompt_score_only_new_frames():
    codes = torch.randint(0, 1024, (512 + 700, 8), generator=torch.Generator().manual_seed(2))
    windows = layouts.fine_windows(codes, n_history=512)
    assert [(w.start, w.new_from, w.new_to) for w in windows] == [(0, 512, 1024), (188, 1024 - 188, 1024)]
    batch = layouts.fine_batch(windows, [3, 3])
    assert torch.equal(batch["input_ids"][0, :512], codes[:512])  # the prompt is given in full
    assert (batch["input_ids"][0, 512:, 3:] == 1024).all() and torch.equal(batch["input_ids"][0, 512:, :3],
                                                                           codes[512:1024, :3])
    assert torch.equal(batch["labels"][1, 836:], codes[1024:, 3]) and (batch["labels"][1, :836] == -100).all()


def test_generate_audio_decodes_each_row_to_its_length():
    semantic, coarse, fine = (ours_from(hf_model(kind)) for kind in ("semantic", "coarse_acoustics", "fine_acoustics"))

    class Tokenizer:
        def encode(self, text):
            return [ord(char) for char in text]

    class StubCodec:
        calls = []

        def decode(self, codes):
            self.calls.append(codes)
            return codes.float().sum(dim=1)

    codec = StubCodec()
    config = BarkGenerationConfig(semantic=SemanticGenerationConfig(max_new_tokens=8))
    waveforms = generate_audio(["hi there", "ok"], Tokenizer(), semantic, coarse, fine, codec, config,
                               semantic_temperature=None, coarse_temperature=None, fine_temperature=None,
                               min_eos_p=None, progress=False)
    expected_semantic = generate_semantic(semantic, [Tokenizer().encode("hi there"), Tokenizer().encode("ok")],
                                          config=config)
    expected_coarse, lengths = generate_coarse(coarse, expected_semantic)
    expected_codes = generate_fine(fine, expected_coarse)
    assert len(waveforms) == 2
    for row, (codes, waveform) in enumerate(zip(codec.calls, waveforms)):
        frames = int(lengths[row]) // 2
        assert codes.dtype == torch.long and codes.shape == (frames, 8)
        assert torch.equal(codes, expected_codes[row, :, :frames].T)
        assert torch.equal(waveform, codes.float().sum(dim=1))
