import math

import torch

from speechtrain.models.soundstorm import IGNORE_INDEX, SoundStormMasking

K, Q = 16, 4
MASK = K


def make_batch(lengths=(24, 17, 9), seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = max(lengths)
    codes = torch.randint(0, K, (len(lengths), frames, Q), generator=generator)
    frame_mask = torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]
    return codes.masked_fill(~frame_mask[..., None], 0), frame_mask


def test_counts_levels_prompt_and_padding_for_many_draws():
    codes, frame_mask = make_batch()
    lengths = frame_mask.sum(1)
    masking = SoundStormMasking(K, Q, "cosine", no_replace_prob=0.0, random_token_prob=0.0)
    generator = torch.Generator().manual_seed(0)
    seen_levels = set()
    for _ in range(40):
        out = masking(codes, frame_mask, generator)
        q, prompt = out.level, out.prompt_lengths
        seen_levels.add(q)
        assert ((prompt >= 0) & (prompt <= lengths - 2)).all()  # never the whole sample
        positions = torch.arange(codes.shape[1])[None, :]
        free = frame_mask & (positions >= prompt[:, None])
        # level q: exactly the picked positions hold the mask id, all inside the free frames
        assert torch.equal(out.inputs[..., q] == MASK, out.loss_mask)
        assert not (out.loss_mask & ~free).any()
        assert torch.equal(out.loss_mask.sum(1), out.num_masked)
        assert (out.num_masked >= 1).all()
        # levels above q: masked at every free frame, untouched elsewhere
        above = out.inputs[..., q + 1:]
        assert (above[free] == MASK).all()
        assert torch.equal(above[~free], codes[..., q + 1:][~free])
        # levels below q, the prompt and the padding: untouched
        assert torch.equal(out.inputs[..., :q], codes[..., :q])
        assert torch.equal(out.inputs[~free], codes[~free])
        # labels: level q's original codes exactly on the loss mask
        assert torch.equal(out.labels[out.loss_mask], codes[..., q][out.loss_mask])
        assert (out.labels[~out.loss_mask] == IGNORE_INDEX).all()
        assert not (out.loss_mask & ~frame_mask).any()
    assert seen_levels == set(range(Q))


def test_masked_count_equals_the_schedule_value_on_the_true_length():
    codes, frame_mask = make_batch((30, 20, 11))
    prompt = torch.tensor([4, 0, 3])
    times = torch.tensor([0.3, 0.9, 0.999])
    for schedule, fraction in (("cosine", lambda t: math.cos(t * math.pi / 2)), ("linear", lambda t: 1 - t)):
        out = SoundStormMasking(K, Q, schedule)(codes, frame_mask, torch.Generator().manual_seed(1), level=1,
                                                times=times, prompt_lengths=prompt)
        free = [30 - 4, 20 - 0, 11 - 3]
        expected = [max(1, math.floor(n * fraction(float(t)))) for n, t in zip(free, times.tolist())]
        assert out.num_masked.tolist() == expected
        assert out.loss_mask.sum(1).tolist() == expected
        assert not out.loss_mask[0, :4].any() and not out.loss_mask[2, :3].any()


def test_bert_corruption_keeps_or_randomises_some_picked_tokens_and_scores_all_of_them():
    codes, frame_mask = make_batch((64, 64), seed=3)
    masking = SoundStormMasking(K, Q, "linear", no_replace_prob=0.4, random_token_prob=0.5)
    generator = torch.Generator().manual_seed(0)
    saw_kept = saw_random = False
    for _ in range(20):
        out = masking(codes, frame_mask, generator, level=0, times=torch.zeros(2), prompt_lengths=torch.zeros(2,
                                                                                                      dtype=torch.long))
        assert out.loss_mask.all()  # t = 0 picks every frame, and every picked frame is scored
        level = out.inputs[..., 0]
        not_mask = level != MASK
        kept, changed = not_mask & (level == codes[..., 0]), not_mask & (level != codes[..., 0])
        saw_kept |= bool(kept.any())
        saw_random |= bool(changed.any())
        assert int(not_mask.sum(1).max()) <= math.floor(64 * 0.4) + math.floor(64 * 0.5)
        assert ((level == MASK).sum(1) >= 1).all()
    assert saw_kept and saw_random


def test_same_generator_seed_same_corruption():
    codes, frame_mask = make_batch()
    masking = SoundStormMasking(K, Q)
    first = masking(codes, frame_mask, torch.Generator().manual_seed(7))
    second = masking(codes, frame_mask, torch.Generator().manual_seed(7))
    assert first.level == second.level and torch.equal(first.inputs, second.inputs)
