"""The generation delay rule (higgs_train/llm/delay_state.py) alone, against the release's and the
transformers port's rules, on the same scripted logits: which codebooks are forced, where a stream
ends, and the frames it returns.

The release's rule is restated from boson-multimodal 0.1.1 (HiggsAudioModel._sample_audio_tokens,
the delay-pattern part): codes are drawn unmasked, then codebooks that have not started are
overwritten with BOS; the first codebook c that draws EOS overwrites codebooks 0..c-1 with EOS, and
each later step overwrites one more codebook until the last; the caller drops the first and the
last frame. The port's rule is its own logits processor, imported from transformers.
"""
from __future__ import annotations

import torch

from higgs_train.llm.delay import revert_delay
from higgs_train.llm.delay_state import DelayState

K, BOS, EOS, A = 8, 1024, 1025, 1026
AUDIO_OUT_BOS, AUDIO_OUT, DELAY = 128013, 128016, 128014   # the port's config defaults


def scripted_logits(positions: int, eos_at: tuple[int, int] | None = None, seed: int = 0) -> torch.Tensor:
    """[positions + 1, K, A]: random logits per position (they do not depend on what was drawn, so
    every rule sees the same ones), stream BOS/EOS far below the codes except one EOS at
    (position, codebook)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(positions + 1, K, A, generator=g)
    logits[:, :, BOS:] = -50.0
    if eos_at is not None:
        logits[eos_at[0], eos_at[1], EOS] = 50.0
    return logits


def ours(logits, max_frames=10 ** 4):
    """(stream [K, L], frames [K, F], forced {position: (BOS-only codebooks, EOS-only codebooks)})."""
    state, forced = DelayState(K, BOS, EOS, A, max_frames), {}
    while not state.done and state.j + 1 < len(logits):
        allowed = state.allowed()
        forced[state.j + 1] = (_only(allowed, BOS), _only(allowed, EOS))
        state.push(logits[state.j + 1].masked_fill(~allowed, float("-inf")).argmax(-1))
    return state.stream[:, :state.j + 1], state.frames(), forced


def _only(allowed: torch.Tensor, code: int) -> set[int]:
    return {k for k in range(K) if allowed[k, code] and allowed[k].sum() == 1}


def release(logits):
    """(stream [K, L], frames [K, F], forced {position: (BOS codebooks, EOS codebooks)}) by the release's rule."""
    stream, forced = [torch.full((K,), BOS)], {}
    started, remaining = 0, None
    for j in range(1, len(logits)):
        codes = logits[j].argmax(-1)
        bos, eos = set(), set()
        if started + 1 < K:
            codes[started + 1:] = BOS
            bos = set(range(started + 1, K))
            started += 1
        if remaining is not None:
            codes[:K - remaining] = EOS
            eos = set(range(K - remaining))
            remaining -= 1
        elif (codes == EOS).any():
            c = int((codes == EOS).nonzero()[0])
            codes[:c] = EOS
            eos = set(range(c))
            remaining = K - c - 1
        stream.append(codes)
        forced[j] = (bos, eos)
        if remaining is not None and remaining <= 0:
            break
    s = torch.stack(stream, 1)
    return s, revert_delay(s)[:, 1:-1], forced


def port(logits):
    """(stream [K, L], forced {position: (BOS codebooks, EOS codebooks)}) by the port's logits
    processor, fed the text ids its generate() appends (the delay token once a stream EOS is drawn)."""
    from transformers.models.higgs_audio_v2.generation_higgs_audio_v2 import \
        HiggsAudioV2DelayPatternLogitsProcessor

    proc = HiggsAudioV2DelayPatternLogitsProcessor(list(range(1, K + 1)), AUDIO_OUT_BOS, DELAY, BOS, EOS, K, A)
    ids = torch.tensor([[7, 8, 9, 10, 11, 12, 13, AUDIO_OUT_BOS]])       # a prompt ending <|audio_out_bos|>
    stream, forced = [], {}
    for step in range(len(logits)):                # step s emits stream position s (0: the BOS frame)
        scores = proc(ids, logits[max(step, 1)].reshape(1, -1)).view(K, A)
        finite = scores > float("-inf")
        forced[step] = ({k for k in range(K) if finite[k].sum() == 1 and finite[k, BOS]},
                        {k for k in range(K) if finite[k].sum() == 1 and finite[k, EOS]})
        codes = scores.argmax(-1)
        stream.append(codes)
        if (codes == EOS).all():
            break
        nxt = DELAY if (codes == EOS).any() or ids[0, -1] == DELAY else AUDIO_OUT
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return torch.stack(stream, 1), forced


def test_bos_rule_equals_the_release_and_the_port():
    """Position j: codebooks k >= j hold BOS, in all three rules (the stream's first K positions)."""
    logits = scripted_logits(40)
    _, _, ours_forced = ours(logits)
    _, _, rel_forced = release(logits)
    _, port_forced = port(logits)
    assert port_forced[0][0] == set(range(K))                     # the port emits the BOS frame we feed
    for j in range(1, K + 3):
        want = set(range(j, K))
        assert ours_forced[j][0] == rel_forced[j][0] == port_forced[j][0] == want, j


def test_no_eos_frames_equal_the_release_and_the_port():
    """Without a drawn EOS the three streams are equal position for position, and our frame limit
    ends ours after exactly max_frames frames."""
    logits = scripted_logits(60)
    stream, frames, _ = ours(logits, max_frames=40)
    rel, _, _ = release(logits)
    prt, _ = port(logits)
    assert stream.shape == (K, 41 + K) and frames.shape == (K, 40)   # frames 0..40, the EOS frame 41, its delay
    assert torch.equal(stream[:, :41], rel[:, :41]) and torch.equal(stream[:, :41], prt[:, :41])
    assert torch.equal(frames, revert_delay(rel)[:, 1:41])
    assert (stream[:, 41:] == EOS).sum() == sum(K - k for k in range(K))   # codebook k: EOS from 41 + k


def test_eos_in_codebook_0_ends_where_the_release_ends():
    """Codebook 0 draws EOS at position 20 (frame 20): ours and the release end at position 27 and
    return frames 1..19, equal; the release leaves codebook k's code at frame 20 free (position
    20 + k) where ours forces EOS; the port forces each codebook one position later than ours and
    ends at position 28."""
    logits = scripted_logits(60, eos_at=(20, 0))
    stream, frames, forced = ours(logits)
    rel, rel_frames, rel_forced = release(logits)
    prt, port_forced = port(logits)
    assert stream.shape[1] - 1 == rel.shape[1] - 1 == 27 and prt.shape[1] - 1 == 28
    assert frames.shape == (K, 19) and torch.equal(frames, rel_frames)
    assert torch.equal(frames, revert_delay(prt)[:, 1:20])
    for p in range(21, 28):
        assert forced[p][1] == set(range(p - 20 + 1))                   # ours: codebook k from 20 + k
        assert rel_forced[p][1] == set(range(p - 20))                   # the release: from 21 + k
        assert port_forced[p + 1][1] == forced[p][1]                    # the port: one position later
    assert (rel[1:, 21:28].diagonal() < BOS).all()                      # the release's free frame-20 codes
    assert (stream[:, 20:] == EOS).sum() == K * 8 - sum(range(K))       # ours: frame 20 is EOS everywhere


def test_eos_in_a_later_codebook_forces_the_earlier_ones_at_once():
    """Codebook 3 draws EOS at position 20 (frame 17): codebooks 0-2 become EOS at position 20 in
    ours and in the release; both end at position 24 and return frames 1..16, equal; the port
    returns the same frames 1..16 (it lets codebook 3 draw codes again until position 24)."""
    logits = scripted_logits(60, eos_at=(20, 3))
    stream, frames, forced = ours(logits)
    rel, rel_frames, rel_forced = release(logits)
    prt, _ = port(logits)
    assert (stream[:4, 20] == EOS).all() and (rel[:4, 20] == EOS).all()
    assert rel_forced[20][1] == {0, 1, 2}
    assert stream.shape[1] - 1 == rel.shape[1] - 1 == 17 + K - 1
    assert frames.shape == (K, 16) and torch.equal(frames, rel_frames)
    assert torch.equal(frames, revert_delay(prt)[:, 1:17])
    assert (prt[3, 21:24] < BOS).all()                                  # the port: codebook 3 draws codes again


def test_running_frames_the_first_frame_and_a_guard_end():
    state = DelayState(K, BOS, EOS, A, max_frames=100)
    assert not state.allowed()[0, EOS] and state.allowed()[0, :BOS].all()   # frame 1: a code, never EOS
    for j in range(1, 12):
        assert state.allowed()[0, EOS] == (j >= 2)
        state.push(torch.full((K,), j))
        assert state.frames().shape == (K, max(0, j - K + 1))               # frames every codebook reached
    assert state.history().shape == (K, 11)
    assert DelayState(K, BOS, EOS, A, 9).allowed() is DelayState(K, BOS, EOS, A, 50).allowed()  # one per pattern
    state.end(2)                                                            # a stop rule keeps frames 1..2
    assert state.done and state.frames().shape == (K, 2)
    assert torch.equal(state.frames()[:, 0], torch.arange(1, K + 1))        # frame 1: codebook k at position 1 + k
