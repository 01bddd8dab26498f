"""ESPnet transducer model whose ``model_conf`` selects the transducer loss.

``transducer_loss``:
  - ``rnnt``: the full RNN-T loss of torchaudio (works on a pip install);
  - ``bat``: the boundary-aware transducer loss (CIF-pruned lattice), options in ``bat_conf``;
  - ``espnet``: ESPnet's own path (warp-transducer, or k2 with ``use_k2_pruned_loss``).
Everything else (auxiliary CTC / LM losses, validation CER/WER) is ESPnet's.
"""

import contextlib
import inspect
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torchaudio
from espnet2.asr_transducer.espnet_transducer_model import ESPnetASRTransducerModel
from espnet2.torch_utils.device_funcs import force_gatherable
from torch.amp import autocast
from typeguard import typechecked

from espnet_rwkv.asr.bat_loss import BATLoss
from espnet_rwkv.asr.encoder import min_input_frames
from espnet_rwkv.ops.checks import check_values

TRANSDUCER_LOSSES = ("rnnt", "bat", "espnet")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys do not match the model rebuilt from its config."""


class BadUtteranceError(ValueError):
    """Utterances of a batch that cannot be trained on; the message names them (ids, or batch rows).

    ``rows`` are their batch rows and ``problem`` what is wrong with them, for
    ``_naming_utterances`` to put ids in place of the rows.
    """

    def __init__(self, rows: List[int], problem: str, utt_ids: Optional[Sequence[str]] = None):
        names = [utt_ids[i] for i in rows] if utt_ids is not None else [f"batch row {i}" for i in rows]
        super().__init__(f"utterance(s) {names} {problem}")
        self.rows, self.problem = rows, problem


@contextlib.contextmanager
def _naming_utterances(utt_ids: Optional[Sequence[str]]):
    """Re-raise a ``BadUtteranceError`` of the block with the batch's utterance ids (ESPnet's ``utt_id``)."""
    try:
        yield
    except BadUtteranceError as e:
        if utt_ids is None:
            raise
        raise BadUtteranceError(e.rows, e.problem, utt_ids) from None


class TransducerModel(ESPnetASRTransducerModel):
    """ESPnet's transducer model with a selectable loss and strict checkpoint loading.

    Args (beyond ESPnet's ``ESPnetASRTransducerModel``):
        transducer_loss: "rnnt", "bat" or "espnet" (see module docstring).
        bat_conf: options of ``espnet_rwkv.asr.bat_loss.BATLoss`` (``transducer_loss: bat`` only).
    """

    @typechecked
    def __init__(self, *args, transducer_loss: str = "rnnt", bat_conf: Dict = {}, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if transducer_loss not in TRANSDUCER_LOSSES:
            raise ValueError(f"model_conf.transducer_loss must be one of {TRANSDUCER_LOSSES}, got {transducer_loss!r}")
        if bat_conf and transducer_loss != "bat":
            raise ValueError("model_conf.bat_conf is only used with transducer_loss: bat")
        if self.use_k2_pruned_loss and transducer_loss != "espnet":
            raise ValueError("model_conf.use_k2_pruned_loss needs transducer_loss: espnet")
        if self.fastemit_lambda > 0 and transducer_loss != "espnet":
            raise ValueError(
                "model_conf.fastemit_lambda is only supported by transducer_loss: espnet (warp-transducer)"
            )
        self.transducer_loss = transducer_loss
        if transducer_loss == "bat":
            self.bat = BATLoss(self.encoder.output_size, **bat_conf)
        self.min_input_frames = min_input_frames(self.encoder.embed)

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Speech (B, S), lengths (B,), labels (B, L), lengths (B,) -> loss, stats, batch size.

        Raises:
            BadUtteranceError: naming the utterances (ESPnet's ``utt_id``) with an
                empty transcript, too few feature frames, NaN or infinite features,
                or (BAT) more labels than their frames can reach.
        """
        with _naming_utterances(kwargs.get("utt_id")):
            if check_values(text_lengths):
                _check_transcripts(text_lengths)
            if self.transducer_loss == "espnet":
                return super().forward(speech, speech_lengths, text, text_lengths, **kwargs)
            return self._forward(speech, speech_lengths, text, text_lengths, kwargs.get("utt_id"))

    def _forward(self, speech, speech_lengths, text, text_lengths, utt_ids):
        encoder_out, encoder_out_lens = self.encode(speech, speech_lengths)
        decoder_in, target, t_len, u_len = transducer_io(text, text_lengths, encoder_out_lens)
        self.decoder.set_device(encoder_out.device)
        decoder_out = self.decoder(decoder_in)

        stats = {}
        if self.transducer_loss == "bat":
            if check_values(t_len):
                self._check_reachable(t_len, u_len)
            bat = self.bat(encoder_out, decoder_out, target, t_len, u_len, self.joint_network)
            loss_trans = bat["loss"]
            # loss_quantity is the mean |sum alpha - U|: how far the CIF is from counting labels.
            stats.update(loss_transducer=bat["loss_transducer"].detach(), loss_quantity=bat["loss_quantity"].detach())
        else:
            joint_out = self.joint_network(encoder_out.unsqueeze(2), decoder_out.unsqueeze(1))
            with autocast(encoder_out.device.type, enabled=False):
                loss_trans = torchaudio.functional.rnnt_loss(
                    joint_out.float(), target, t_len, u_len, blank=0, reduction="mean"
                )
            stats["loss_transducer"] = loss_trans.detach()
        if check_values(loss_trans) and not torch.isfinite(loss_trans):
            # ESPnet's trainer skips the update when the gradient is not finite; say which batch.
            logging.warning(f"transducer loss is {loss_trans.item()} for utterances {utt_ids}")

        loss = self.transducer_weight * loss_trans
        if self.use_auxiliary_ctc:
            loss_ctc = self._calc_ctc_loss(encoder_out, target, t_len, u_len)
            loss = loss + self.auxiliary_ctc_weight * loss_ctc
            stats["loss_aux_ctc"] = loss_ctc.detach()
        if self.use_auxiliary_lm_loss:
            loss_lm = self._calc_lm_loss(decoder_out, target)
            loss = loss + self.auxiliary_lm_loss_weight * loss_lm
            stats["loss_aux_lm"] = loss_lm.detach()
        if not self.training and (self.report_cer or self.report_wer):
            stats["cer_transducer"], stats["wer_transducer"] = self._error_rates(encoder_out, target, t_len)
        stats["loss"] = loss.detach()
        return force_gatherable((loss, stats, speech.size(0)), loss.device)

    def collect_feats(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        """ESPnet's (collect_stats), refusing the features ``encode`` refuses."""
        with _naming_utterances(kwargs.get("utt_id")):
            _check_transcripts(text_lengths)
            feats = super().collect_feats(speech, speech_lengths, text, text_lengths, **kwargs)
            if self.extract_feats_in_collect_stats:
                self._check_features(feats["feats"], feats["feats_lengths"], speech_lengths)
                if self.transducer_loss == "bat":
                    self._check_reachable(self.encoder.embed.get_output_lengths(feats["feats_lengths"]), text_lengths)
        return feats

    def encode(self, speech: torch.Tensor, speech_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """ESPnet's: speech (B, S), lengths (B,) -> encoder output (B, T, D_enc), lengths (B,); checked features."""
        with autocast("cuda", enabled=False):
            feats, feats_lengths = self._extract_feats(speech, speech_lengths)
            if check_values(feats):
                self._check_features(feats, feats_lengths, speech_lengths)
            if self.specaug is not None and self.training:
                feats, feats_lengths = self.specaug(feats, feats_lengths)
            if self.normalize is not None:
                feats, feats_lengths = self.normalize(feats, feats_lengths)
        return self.encoder(feats, feats_lengths)

    def _extract_feats(self, speech: torch.Tensor, speech_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """ESPnet's: speech (B, S), lengths (B,) -> features (B, T, F), lengths (B,).

        Without ESPnet's ``speech[:, :speech_lengths.max()]``, a host sync every step on
        CUDA: it only trims the padding DataParallel's split leaves, which the lengths
        already mask (ESPnet's collate pads each batch to its longest utterance).
        """
        if self.frontend is None:
            return speech, speech_lengths
        return self.frontend(speech, speech_lengths)

    def _check_features(self, feats: torch.Tensor, feats_lengths: torch.Tensor, speech_lengths: torch.Tensor) -> None:
        """Refuse utterances the encoder cannot train on: features (B, T, F), lengths (B,) of speech lengths (B,).

        Too few frames give no encoder frame (a loss of 0, or none); NaN or
        infinite features (from NaN, infinite or huge samples) make every
        gradient step of the run invalid and the feature statistics NaN.
        """
        short = (feats_lengths < self.min_input_frames).nonzero().flatten().tolist()
        if short:
            raise BadUtteranceError(
                short,
                f"are too short: {feats_lengths[short].tolist()} feature frames ({speech_lengths[short].tolist()} "
                f"samples), the subsampling needs at least {self.min_input_frames}; remove them from the data "
                "dir (asr.sh stage 4 does, with --min_wav_duration)",
            )
        frames = torch.arange(feats.size(1), device=feats.device)[None, :] < feats_lengths[:, None]
        bad_frames = ~torch.isfinite(feats).all(dim=-1) & frames  # (B, T)
        bad = bad_frames.any(dim=1).nonzero().flatten().tolist()
        if bad:
            first = bad_frames[bad].int().argmax(dim=1).tolist()
            raise BadUtteranceError(
                bad,
                f"have NaN or infinite features (first at feature frame {first}); their audio has NaN, "
                "infinite or huge samples (python -m espnet_rwkv.data_check finds them in a data dir)",
            )

    def _check_reachable(self, t_len: torch.Tensor, u_len: torch.Tensor) -> None:
        """Refuse utterances (lengths (B,)) whose labels BAT's windows cannot all reach."""
        unreachable = self.bat.unreachable(t_len, u_len)
        if unreachable:
            raise BadUtteranceError(
                unreachable,
                f"have more labels ({u_len[unreachable].tolist()}) than BAT windows of "
                f"{self.bat.left + self.bat.right} labels can reach in their {t_len[unreachable].tolist()} "
                "encoder frames (at most frames * (window - 1)); remove them, or widen "
                "model_conf.bat_conf (left + right)",
            )

    def _error_rates(self, encoder_out, target, t_len):
        if self.error_calculator is None:
            from espnet2.asr_transducer.error_calculator import ErrorCalculator

            self.error_calculator = ErrorCalculator(
                self.decoder,
                self.joint_network,
                self.token_list,
                self.sym_space,
                self.sym_blank,
                nstep=self.validation_nstep,
                report_cer=self.report_cer,
                report_wer=self.report_wer,
            )
        return self.error_calculator(encoder_out, target, t_len)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a checkpoint, refusing any key mismatch.

        ESPnet rebuilds a model from config.yaml and loads with ``strict=False``;
        a config that no longer matches its checkpoint would then decode with
        random weights. Here a mismatch is always an error.
        """
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointMismatchError(
                "the checkpoint does not match the model built from its config: "
                f"{len(result.missing_keys)} missing key(s) {result.missing_keys[:5]}, "
                f"{len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:5]}"
            )
        return result


def _check_transcripts(text_lengths: torch.Tensor) -> None:
    empty = (text_lengths == 0).nonzero().flatten().tolist()
    if empty:
        raise BadUtteranceError(empty, "have an empty transcript; give them text or remove them from the data dir")


def transducer_io(
    text: torch.Tensor, text_lengths: torch.Tensor, encoder_out_lens: torch.Tensor, blank_id: int = 0
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ESPnet's ``get_transducer_task_io`` for right-padded labels, in a few tensor ops.

    ESPnet's loops over the utterances and reads every length on the host (a sync per
    utterance on CUDA); here the padding (``text_lengths`` onwards) becomes blank.

    Args:
        text: (B, L) labels, padded with anything past ``text_lengths``.
        text_lengths: (B,); encoder_out_lens: (B,).
    Returns:
        decoder_in (B, L + 1) blank-prefixed labels, target (B, L) int32, t_len and u_len (B,) int32.
    """
    padding = torch.arange(text.size(1), device=text.device)[None, :] >= text_lengths[:, None]
    labels = text.masked_fill(padding, blank_id)
    decoder_in = torch.cat([labels.new_full((text.size(0), 1), blank_id), labels], dim=1)
    return decoder_in, labels.int(), encoder_out_lens.int(), text_lengths.int()


def _constructor_signature() -> inspect.Signature:
    """ESPnet's constructor arguments followed by ours.

    ESPnet dumps ``get_default_kwargs(model class)`` as the ``model_conf``
    defaults of every config.yaml; with ``*args, **kwargs`` it would lose all
    of ESPnet's own defaults.
    """
    parent = inspect.signature(ESPnetASRTransducerModel.__init__).parameters.values()
    own = inspect.signature(TransducerModel.__init__).parameters
    return inspect.Signature([*parent, own["transducer_loss"], own["bat_conf"]])


TransducerModel.__init__.__signature__ = _constructor_signature()
