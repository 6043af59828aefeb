"""The release's rule for ending a Higgs TTS 3 stream, as the engine's delay state (the family's
`delay_state` hook; the DualFFN family's is higgs_train/llm/delay_state.py, whose positions,
frames and masks this reuses).

The release's sampler (sglang-omni `models/higgs_tts/sampler.py: step`, and mlx-audio's
`higgs_audio_v3` generation step, which agree) differs from DualFFN's rule in three places, and
this state follows it in each, so that greedy frames equal the reference's
(tests/test_tts3_generation.py):
- the first K rows (the delay window): codebooks above the row are begin-of-stream (forced here,
  overwritten there), and an end-of-stream drawn by codebook 0 does not end the stream — it is fed
  back to the model as drawn, and decodes as code 0 (the release's vocoder replaces codes >= 1024
  by 0), which is what the frames hold. DualFFN's rule instead forbids EOS at the first row and
  ends the stream on it afterwards;
- only codebook 0 ends a stream: the later codebooks may not draw BOS or EOS before the end (the
  release samples them unmasked, and its vocoder decodes such a code as 0);
- the stream is done at the row where codebook 7 reaches the last real frame (the release's
  countdown of K - 2 steps after codebook 0's EOS): K - 1 rows after that EOS, one fewer than
  DualFFN's rule runs, which also draws the all-EOS row.
One difference is kept on purpose: once codebook 0 has ended, the later codebooks are fed EOS as
their delay reaches the end (what the delay pattern holds there in training,
higgs_train/families/higgs_tts3/prompt.py), where the release feeds whatever it sampled and drops
it. The frames are the same up to the row after codebook 0's EOS; later real codes of the last
codebooks are drawn from logits that saw EOS instead of a dropped code.
"""
from __future__ import annotations

import torch
from torch import Tensor

from higgs_train.llm.delay_state import BOS_ONLY, CODE_ONLY, CODE_OR_EOS, EOS_ONLY, DelayState, _mask


class ReleaseDelayState(DelayState):
    """One row's delayed stream under the release's rule (module docstring). Position j is row j-1;
    position 0 stands for <|audio|>, the prompt's last position (no begin-of-stream frame is fed,
    but the first row is drawn from its logits exactly as DelayState's first position is)."""

    def allowed(self) -> Tensor:
        j = self.j + 1
        pattern = tuple(BOS_ONLY if j - k <= 0 else
                        EOS_ONLY if j - k >= self.eos_frame or j - k > self.max_frames else
                        CODE_OR_EOS if k == 0 else CODE_ONLY for k in range(self.K))
        return _mask(self.K, self.audio_vocab, self.bos, self.eos, pattern)

    def push(self, codes: Tensor) -> Tensor:
        self.j += 1
        frame = self.j - torch.arange(self.K)                   # the frame each codebook is at
        eos0 = int(codes[0]) == self.eos
        # codebook 0's EOS ends the stream after the delay window (or at the frame limit)
        if eos0 and (self.j > self.K or frame[0] > self.max_frames):
            self.eos_frame = min(self.eos_frame, int(frame[0]))
        fed = torch.where(frame >= self.eos_frame, self.eos, codes)
        self.stream[:, self.j] = fed
        if eos0 and frame[0] < self.eos_frame:                   # ignored in the window: decodes as code 0
            self.stream[0, self.j] = 0
        self.done = self.j >= self.eos_frame + self.K - 2
        return fed
