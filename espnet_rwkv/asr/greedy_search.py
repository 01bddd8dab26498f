"""Greedy transducer search, as sherpa-onnx runs it, as a drop-in for ESPnet's ``BeamSearchTransducer``.

ESPnet's searches with ``beam_size: 1`` are not greedy (its default search
expands several labels per frame and keeps blank-ended hypotheses apart).
This one emits at most one label per encoder frame: the joint network's
argmax, blank (0) emitting nothing. It continues across calls (streaming):

    speech2text.beam_search = GreedySearch(model.decoder, model.joint_network)
"""

from typing import List

import torch
from espnet2.asr_transducer.beam_search_transducer import Hypothesis


class GreedySearch:
    """``__call__(enc_out (T, D), is_final)`` -> [best Hypothesis]; ``reset_cache()`` starts a new stream."""

    use_lm = False
    default_beam_search = None  # read by espnet_rwkv.asr.beam_history (its history shortening is for beam search)

    def __init__(self, decoder: torch.nn.Module, joint_network: torch.nn.Module):
        self.decoder = decoder
        self.joint_network = joint_network
        self.search_algorithm = self.greedy
        self.reset_cache()

    def reset_cache(self) -> None:
        self.search_cache = None
        self._dec_out = None
        self._state = None

    @torch.no_grad()
    def __call__(self, enc_out: torch.Tensor, is_final: bool = True) -> List[Hypothesis]:
        hyps = self.greedy(enc_out)
        if is_final:
            self.reset_cache()
        else:
            self.search_cache = hyps
        return hyps

    def greedy(self, enc_out: torch.Tensor) -> List[Hypothesis]:
        if self.search_cache:
            hyp = self.search_cache[0]
        else:
            hyp = Hypothesis(score=0.0, yseq=[0], dec_state=self.decoder.init_state(1))
            self._dec_out, self._state = self.decoder.score(hyp.yseq, hyp.dec_state)
        score = hyp.score
        for t in range(enc_out.size(0)):
            logp = torch.log_softmax(self.joint_network(enc_out[t : t + 1], self._dec_out), dim=-1)[0]
            y = int(logp.argmax())
            score += float(logp[y])
            if y != 0:
                hyp = Hypothesis(score=score, yseq=hyp.yseq + [y], dec_state=self._state)
                self._dec_out, self._state = self.decoder.score(hyp.yseq, self._state)
        return [Hypothesis(score=score, yseq=hyp.yseq, dec_state=self._state)]
