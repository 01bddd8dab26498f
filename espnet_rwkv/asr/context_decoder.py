"""Stateless prediction network over the last ``context_size`` labels (``decoder: stateless_context``).

ESPnet's ``stateless`` decoder embeds the last label only. Then the joint
network cannot tell "TWO emitted once" from "TWO emitted twice": both give
the same decoder output, so on the frames of a second "two" the lattice asks
for TWO (one emitted so far) and for blank (both emitted) from the same input,
and the model learns a coin toss for every repeated label. With the last two
labels ("Rnn-transducer with stateless prediction network", Ghodsi et al.,
ICASSP 2020; k2/icefall's default) the two states differ. Still stateless:
sherpa-onnx feeds exactly these labels (its ``context_size`` metadata).

    decoder: stateless_context
    decoder_conf: {embed_size: 144, context_size: 2}

Output: the embeddings of the context labels mixed by a grouped 1-D
convolution over them (4 channels a group), then ReLU.
"""

from typing import Any, List, Optional, Tuple

import torch
from espnet2.asr_transducer.beam_search_transducer import Hypothesis
from espnet2.asr_transducer.decoder.abs_decoder import AbsDecoder
from typeguard import typechecked

GROUP_CHANNELS = 4


class ContextDecoder(AbsDecoder):
    """Labels -> decoder output from the last ``context_size`` labels (blank before the first).

    Args:
        vocab_size: output size of the model (blank is 0).
        embed_size: embedding and output size; a multiple of 4 when context_size > 1.
        context_size: labels the output depends on (1: ESPnet's ``stateless``, without the ReLU).
        embed_dropout_rate: dropout of the embeddings in training.
    """

    @typechecked
    def __init__(self, vocab_size: int, embed_size: int = 256, context_size: int = 2, embed_dropout_rate: float = 0.0):
        super().__init__()
        if context_size < 1:
            raise ValueError(f"decoder_conf.context_size must be >= 1, got {context_size}")
        if context_size > 1 and embed_size % GROUP_CHANNELS:
            raise ValueError(
                f"decoder_conf.embed_size must be a multiple of {GROUP_CHANNELS} with a context, got {embed_size}"
            )
        if not 0.0 <= embed_dropout_rate < 1.0:
            raise ValueError(f"decoder_conf.embed_dropout_rate must be in [0, 1), got {embed_dropout_rate}")
        self.embed = torch.nn.Embedding(vocab_size, embed_size, padding_idx=0)
        self.dropout = torch.nn.Dropout(embed_dropout_rate)
        self.mix = None
        if context_size > 1:
            self.mix = torch.nn.Conv1d(
                embed_size, embed_size, context_size, groups=embed_size // GROUP_CHANNELS, bias=False
            )
        self.context_size = context_size
        self.output_size = embed_size
        self.vocab_size = vocab_size
        self.device = next(self.parameters()).device
        self.score_cache = {}  # ESPnet's beam search empties it per utterance

    def forward(self, labels: torch.Tensor, states: Optional[Any] = None) -> torch.Tensor:
        """Labels (B, U), blank-prefixed -> outputs (B, U, D): output u depends on labels u-c+1..u."""
        x = self.dropout(self.embed(labels))  # (B, U, D)
        if self.mix is None:
            return x
        x = torch.nn.functional.pad(x.transpose(1, 2), (self.context_size - 1, 0))  # blank's embedding is 0
        return torch.relu(self.mix(x)).transpose(1, 2)

    def _contexts(self, label_sequences: List[List[int]]) -> torch.Tensor:
        """(N, context_size) last labels of each sequence, blank-padded on the left."""
        c = self.context_size
        rows = [([0] * c + list(seq))[-c:] for seq in label_sequences]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def score(self, label_sequence: List[int], states: Optional[Any] = None) -> Tuple[torch.Tensor, None]:
        """One hypothesis's labels -> output (D,), None (no state)."""
        key = tuple(label_sequence[-self.context_size :])
        if key not in self.score_cache:
            self.score_cache[key] = self.forward(self._contexts([label_sequence]))[0, -1]
        return self.score_cache[key], None

    def batch_score(self, hyps: List[Hypothesis]) -> Tuple[torch.Tensor, None]:
        """Hypotheses -> outputs (N, D), None."""
        return self.forward(self._contexts([h.yseq for h in hyps]))[:, -1], None

    def set_device(self, device: torch.device) -> None:
        self.device = device

    def init_state(self, batch_size: int) -> None:
        return None

    def select_state(self, states: Optional[torch.Tensor], idx: int) -> None:
        return None

    def create_batch_states(self, new_states: List[Optional[torch.Tensor]]) -> None:
        return None
