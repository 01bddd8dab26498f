"""Edits to ESPnet's beam-search cache that keep a stream's per-window cost flat (docs/streaming.md).

ESPnet's beam search copies a hypothesis's whole label sequence at every
expansion, and its decoders key a cache of their outputs by the whole
sequence ("0_5_9") and keep every prefix ever scored: per frame, work and
memory would grow with the transcript. ``LabelHistory`` moves the label prefix
that every live hypothesis shares out of their sequences between windows, and
puts it back before the final sort and whenever a caller reads a hypothesis.
"""

from typing import Callable, List

# Labels of the common prefix left in each hypothesis (LabelHistory.shorten).
KEEP_LABELS = 8


class LabelHistory:
    """The labels taken out of the live hypotheses of one ``Speech2Text``'s beam search.

    Args:
        speech2text: an ESPnet ``Speech2Text`` whose ``beam_search`` and
            ``asr_model.decoder`` this edits.
    """

    def __init__(self, speech2text):
        self.speech2text = speech2text
        self.committed: List[int] = []  # labels every hypothesis shares, taken out of their yseq

    def reset(self) -> None:
        """Start a new stream: nothing committed."""
        self.committed = []

    def shorten(self) -> None:
        """Keep each hypothesis's label sequence short, so that a window's cost does not grow.

        All live hypotheses extend one common prefix, and the default search
        without an LM reads only the last label and the decoder state, so that
        prefix (less ``KEEP_LABELS``) moves to ``self.committed``: the same
        hypotheses and scores. The decoder's cache keeps the outputs of live
        hypotheses only.
        """
        search = self.speech2text.beam_search
        hyps = search.search_cache or []
        cut = 0
        if hyps and search.search_algorithm == search.default_beam_search and not search.use_lm:
            first = hyps[0].yseq
            common = min(len(hyp.yseq) for hyp in hyps) - 1
            for hyp in hyps[1:]:
                common = next((i for i in range(common) if hyp.yseq[1 + i] != first[1 + i]), common)
            cut = max(common - KEEP_LABELS, 0)
            self.committed += first[1 : 1 + cut]
        self._rewrite_label_sequences(lambda yseq: yseq[:1] + yseq[1 + cut :])

    def restore(self) -> None:
        """Put ``self.committed`` back in front of every hypothesis's labels."""
        committed, self.committed = self.committed, []
        self._rewrite_label_sequences(lambda yseq: yseq[:1] + committed + yseq[1:])

    def full(self, yseq: List[int]) -> List[int]:
        """A hypothesis's whole label sequence: ``yseq`` with the committed labels put back."""
        return yseq[:1] + self.committed + yseq[1:]

    def _rewrite_label_sequences(self, rewrite: Callable[[List[int]], List[int]]) -> None:
        """yseq = rewrite(yseq) for the live hypotheses; the decoder's cached outputs of
        those, and only those, stay, under their new keys."""
        decoder = self.speech2text.asr_model.decoder
        old = getattr(decoder, "score_cache", None)
        cache = {}
        for hyp in self.speech2text.beam_search.search_cache or []:
            key = "_".join(map(str, hyp.yseq))
            hyp.yseq = rewrite(hyp.yseq)
            if old and key in old:
                cache["_".join(map(str, hyp.yseq))] = old[key]
        if old is not None:
            decoder.score_cache = cache
