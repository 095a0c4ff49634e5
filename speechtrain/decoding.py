"""Greedy and beam search with a KV cache for any encoder-decoder that has
`encode(input_features, attention_mask) -> hidden` and
`decode(decoder_input_ids, encoder_hidden_states, encoder_attention_mask, cache) -> (logits, cache)`.

The frame-level `attention_mask` given to `encode` is passed unchanged to `decode` as
`encoder_attention_mask` (a model maps it to its own encoder time axis, or ignores it as Whisper does).
Both searches return, per utterance, the full token list: the prefix, the generated tokens and the end
token when one was produced (as transformers' `generate`, without its padding). Beam search follows
transformers' algorithm (2 * num_beams candidates per step, scores divided by
`generated_length ** length_penalty`, the same early-stopping rule), so both return the same best sequence.
A caller that already ran the encoder (the ASR task's validation, for its loss) passes its states as
`encoder_hidden_states`, and the search does not encode again. Call them on a model in `eval()` mode. Under FSDP
every decoder call gathers parameters collectively, so with `synchronize_ranks` a search stops only when it has
finished on every rank (ranks already done step on, and what they generate then is dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from speechtrain.distributed import every_rank_agrees


class EncoderDecoder(Protocol):
    def encode(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
               encoder_attention_mask: torch.Tensor | None = None, cache: Any = None) -> tuple[torch.Tensor, Any]: ...


def reorder_cache(cache: Any, index: torch.Tensor) -> Any:
    """Selects batch rows `index` of every tensor in a nested list/tuple cache."""
    if isinstance(cache, torch.Tensor):
        return cache.index_select(0, index)
    return type(cache)(reorder_cache(item, index) for item in cache)


def _next_token_log_probs(logits: torch.Tensor, step: int, suppress_tokens: Sequence[int],
                          begin_suppress_tokens: Sequence[int]) -> torch.Tensor:
    """Last-position log-probabilities `[N, vocab]` with suppressed tokens at -inf (after the softmax, as
    transformers' logits processors)."""
    log_probs = logits[:, -1].float().log_softmax(dim=-1)
    banned = list(suppress_tokens) + (list(begin_suppress_tokens) if step == 0 else [])
    if banned:
        log_probs[:, banned] = float("-inf")
    return log_probs


def _check_arguments(prefix_ids: Sequence[int], max_new_tokens: int) -> None:
    if len(prefix_ids) == 0:
        raise ValueError("prefix_ids must hold at least the decoder start token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def _encoded(model: EncoderDecoder, input_features: torch.Tensor, attention_mask: torch.Tensor | None,
             encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
    """`[B, S, d]` encoder states: the caller's when it has them (one encoder pass per batch), else `model.encode`."""
    if encoder_hidden_states is None:
        return model.encode(input_features, attention_mask)
    if encoder_hidden_states.shape[0] != input_features.shape[0]:
        raise ValueError(f"encoder_hidden_states has {encoder_hidden_states.shape[0]} rows but input_features "
                         f"{input_features.shape[0]}; pass the states that encode(input_features, attention_mask) gave")
    return encoder_hidden_states


@torch.no_grad()
def greedy_decode(model: EncoderDecoder, input_features: torch.Tensor, attention_mask: torch.Tensor | None,
                  prefix_ids: Sequence[int], eos_id: int, max_new_tokens: int, suppress_tokens: Sequence[int] = (),
                  begin_suppress_tokens: Sequence[int] = (),
                  logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  synchronize_ranks: bool = False,
                  encoder_hidden_states: torch.Tensor | None = None) -> list[list[int]]:
    """Arg-max decoding; each row stops at its first `eos_id`, the loop when every row has. `logits_processor(
    tokens [N, so far], log_probs [N, vocab]) -> log_probs` runs after the suppression, as transformers' Whisper
    timestamp rules do (`speechtrain.models.whisper.timestamps`). With `encoder_hidden_states` `[B, S, d]` (what
    `model.encode(input_features, attention_mask)` returned) the encoder does not run."""
    _check_arguments(prefix_ids, max_new_tokens)
    encoder_hidden_states = _encoded(model, input_features, attention_mask, encoder_hidden_states)
    batch = encoder_hidden_states.shape[0]
    step_input = torch.tensor([list(prefix_ids)] * batch, device=encoder_hidden_states.device)  # [B, P]
    finished = torch.zeros(batch, dtype=torch.bool, device=step_input.device)
    generated, cache, history = [], None, step_input
    for step in range(max_new_tokens):
        logits, cache = model.decode(step_input, encoder_hidden_states, attention_mask, cache)
        log_probs = _next_token_log_probs(logits, step, suppress_tokens, begin_suppress_tokens)
        if logits_processor is not None:
            log_probs = logits_processor(history, log_probs)
        next_tokens = log_probs.argmax(-1).masked_fill(finished, eos_id)
        history = torch.cat([history, next_tokens[:, None]], dim=1)  # [N, so far + 1]
        generated.append(next_tokens)
        finished |= next_tokens == eos_id
        done = bool(finished.all())
        if every_rank_agrees(done, finished.device) if synchronize_ranks else done:
            break
        step_input = next_tokens[:, None]  # [B, 1]
    sequences = []
    for row in torch.stack(generated, dim=1).tolist():
        end = row.index(eos_id) + 1 if eos_id in row else len(row)
        sequences.append(list(prefix_ids) + row[:end])
    return sequences


@torch.no_grad()
def beam_search(
    model: EncoderDecoder,
    input_features: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prefix_ids: Sequence[int],
    eos_id: int,
    max_new_tokens: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    suppress_tokens: Sequence[int] = (),
    begin_suppress_tokens: Sequence[int] = (),
    synchronize_ranks: bool = False,
    encoder_hidden_states: torch.Tensor | None = None,
) -> list[list[int]]:
    """Beam search; returns the best finished hypothesis per utterance (hypotheses cut by `max_new_tokens`
    count as finished). With `encoder_hidden_states` `[B, S, d]` the encoder does not run, as in `greedy_decode`."""
    _check_arguments(prefix_ids, max_new_tokens)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    encoder_hidden_states = _encoded(model, input_features, attention_mask, encoder_hidden_states)
    batch, beams = encoder_hidden_states.shape[0], num_beams
    device = encoder_hidden_states.device
    encoder_hidden_states = encoder_hidden_states.repeat_interleave(beams, dim=0)  # [B*K, S, d]
    if attention_mask is not None:
        attention_mask = attention_mask.repeat_interleave(beams, dim=0)
    # The live beams' tokens stay on the host: the device holds only what the next decoder call needs, and each
    # step copies its candidates to the host once (not element by element, which would sync B x K times).
    history = torch.tensor([list(prefix_ids)] * (batch * beams))  # [B*K, P + step], host
    # only the first beam is live at the start, so the first step does not pick the same token K times
    running_scores = torch.full((batch, beams), -1.0e9, device=device)
    running_scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    host_offset = torch.arange(batch)[:, None] * beams  # [B, 1]
    batch_offset = host_offset.to(device)

    logits, cache = model.decode(history.to(device), encoder_hidden_states, attention_mask, None)
    for step in range(max_new_tokens):
        log_probs = _next_token_log_probs(logits, step, suppress_tokens, begin_suppress_tokens)
        vocab = log_probs.shape[-1]
        scores = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, beams * vocab)
        top_scores, top_indices = scores.topk(2 * beams, dim=1)  # [B, 2K], best first
        top_beams, top_tokens = top_indices // vocab, top_indices % vocab
        last_step = step == max_new_tokens - 1
        ends = (top_tokens == eos_id) | last_step  # [B, 2K]
        live_scores = top_scores.masked_fill(ends, -1.0e9)
        keep = live_scores.topk(beams, dim=1).indices  # [B, K] ranks of the continuing candidates
        source_rows = (top_beams.gather(1, keep) + batch_offset).flatten()  # [B*K]
        next_tokens = top_tokens.gather(1, keep).flatten()  # [B*K]
        running_scores = live_scores.gather(1, keep)

        # One device-to-host copy per step; float64 holds the float32 scores and the integer indices exactly.
        host = torch.cat([t.double() for t in (top_scores, top_indices, keep, running_scores[:, :1])], dim=1).cpu()
        host_scores, host_indices, host_keep, host_best = host.split([2 * beams, 2 * beams, beams, 1], dim=1)
        host_indices, host_keep = host_indices.long(), host_keep.long()  # [B, 2K], [B, K]
        host_beams, host_tokens = host_indices // vocab, host_indices % vocab
        candidate_scores = host_scores.tolist()
        candidate_beams, candidate_tokens = host_beams.tolist(), host_tokens.tolist()
        for b in range(batch):  # only the best K candidates may finish
            if done[b]:
                continue
            for rank in range(beams):
                token = candidate_tokens[b][rank]
                if token == eos_id or last_step:
                    tokens = history[b * beams + candidate_beams[b][rank]].tolist() + [token]
                    finished[b].append((candidate_scores[b][rank] / (step + 1) ** length_penalty, tokens))
            finished[b] = sorted(finished[b], key=lambda hypothesis: -hypothesis[0])[:beams]
        host_rows = (host_beams.gather(1, host_keep) + host_offset).flatten()  # [B*K], as source_rows
        history = torch.cat([history[host_rows], host_tokens.gather(1, host_keep).flatten()[:, None]], dim=1)

        best_live = host_best[:, 0].tolist()
        for b in range(batch):  # stop once no live beam can beat the worst of K finished hypotheses
            if not done[b] and len(finished[b]) == beams:
                done[b] = best_live[b] / (step + 1) ** length_penalty <= finished[b][-1][0]
        if last_step or (every_rank_agrees(all(done), device) if synchronize_ranks else all(done)):
            break
        cache = reorder_cache(cache, source_rows)
        logits, cache = model.decode(next_tokens[:, None], encoder_hidden_states, attention_mask, cache)
    return [hypotheses[0][1] for hypotheses in finished]


@torch.no_grad()
def decode_to_text(
    model: EncoderDecoder,
    tokenizer: Any,
    input_features: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    prefix_ids: Sequence[int] | None = None,
    synchronize_ranks: bool = False,
    encoder_hidden_states: torch.Tensor | None = None,
) -> list[str]:
    """Transcripts of a batch: the tokenizer's prompt (or `prefix_ids`, e.g. a `<|startofprev|>` prompt before it),
    suppress lists and end token, greedy or beam.

    `max_new_tokens` defaults to what the decoder's positions leave after the prompt. `encoder_hidden_states`: the
    batch's encoder states when the caller has them already (then the encoder does not run again).
    """
    prefix = list(tokenizer.prefix_ids if prefix_ids is None else prefix_ids)
    common = dict(
        prefix_ids=prefix,
        eos_id=tokenizer.eos_id,
        max_new_tokens=max_new_tokens or model.config.max_target_positions - len(prefix),
        suppress_tokens=getattr(tokenizer, "suppress_tokens", ()),
        begin_suppress_tokens=getattr(tokenizer, "begin_suppress_tokens", ()),
        synchronize_ranks=synchronize_ranks,
        encoder_hidden_states=encoder_hidden_states,
    )
    if num_beams > 1:
        sequences = beam_search(model, input_features, attention_mask, num_beams=num_beams, **common)
    else:
        sequences = greedy_decode(model, input_features, attention_mask, **common)
    return [tokenizer.decode(ids[len(prefix) :]).strip() for ids in sequences]
