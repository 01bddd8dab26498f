"""Everything espnet_rwkv changes in ESPnet, in one place (docs/espnet.md).

ESPnet 202611 has no plugin registry: ``ASRTransducerTask.build_model`` calls
the names ``Encoder`` and ``ESPnetASRTransducerModel`` of its own module. We
rebind those two names, nothing else, and edit no installed file:

- ``Encoder`` -> ``build_encoder``: ESPnet's encoder for built-in bodies, the
  RWKV encoder for ``block_type: rwkv``;
- ``ESPnetASRTransducerModel`` -> ``TransducerModel``: ESPnet's model with a
  selectable transducer loss (``model_conf.transducer_loss``) and strict
  checkpoint loading.

and add two choices: ``frontend: kaldi_fbank`` (``KaldiFbank``, the features
sherpa-onnx computes) to the task's ``frontend_choices``, and ``decoder:
stateless_context`` (``ContextDecoder``, a stateless prediction network over
the last labels, which sherpa-onnx also runs) to its ``decoder_choices``. For collect_stats
(asr.sh stage 10), which hands the model batches without their utterance ids,
``abs_task.collect_stats`` is wrapped so that an utterance the model refuses is
named by its id (``_collect_stats_naming_utterances``).

Every ESPnet entry point that builds a transducer model (training, collect
stats, inference, packing, ``Speech2Text.from_pretrained``) goes through
``build_model``, so it sees both once ``register()`` has run. Called through
``espnet_rwkv.register()``; importing this module changes nothing yet.
"""

import contextlib
import functools
import importlib
import importlib.metadata
import io
import sys

from espnet_rwkv import SUPPORTED_ESPNET, __version__


def check_espnet_version() -> None:
    """Raise ImportError unless the installed ESPnet is release ``SUPPORTED_ESPNET``."""
    try:
        version = importlib.metadata.version("espnet")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"espnet_rwkv {__version__} needs espnet {SUPPORTED_ESPNET}: pip install 'espnet=={SUPPORTED_ESPNET}'"
        ) from None
    if version.split(".")[0] != SUPPORTED_ESPNET:
        raise ImportError(
            f"espnet_rwkv {__version__} supports espnet {SUPPORTED_ESPNET}, but espnet {version} "
            f"is installed; install it with: pip install 'espnet=={SUPPORTED_ESPNET}'"
        )


# Printed to stderr by this ESPnet module's import wherever the optional flash-attn is absent: once per
# process, so dozens of times over a recipe, and read as a failure. The transducer task never uses it.
_FLASH_ATTN_MODULE = "espnet2.legacy.nets.pytorch_backend.transformer.attention"
_FLASH_ATTN_NOTICE = "Failed to import Flash Attention"


def _import_without_flash_attn_notice() -> None:
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        importlib.import_module(_FLASH_ATTN_MODULE)
    for line in captured.getvalue().splitlines():
        if not line.startswith(_FLASH_ATTN_NOTICE):
            print(line, file=sys.stderr)


class _KeyedBatches:
    """ESPnet's (keys, batch) iterator, remembering the keys of the batch in flight in ``current``."""

    def __init__(self, batches, current: dict):
        self.batches, self.current = batches, current

    def __len__(self):  # collect_stats sizes its log interval by it, where the iterator has one
        return len(self.batches)

    def __iter__(self):
        for keys, batch in self.batches:
            self.current["keys"] = keys
            yield keys, batch


def _collect_stats_naming_utterances(collect_stats):
    """ESPnet's ``collect_stats``, re-raising ``BadUtteranceError`` with the utterance ids of the batch."""
    from espnet_rwkv.asr.model import BadUtteranceError

    @functools.wraps(collect_stats)
    def wrapper(*, train_iter, valid_iter, **kwargs):
        current = {}
        try:
            collect_stats(
                train_iter=_KeyedBatches(train_iter, current), valid_iter=_KeyedBatches(valid_iter, current), **kwargs
            )
        except BadUtteranceError as e:
            raise BadUtteranceError(e.rows, e.problem, current["keys"]) from None

    wrapper.names_utterances = True
    return wrapper


def register() -> None:
    """Rebind ESPnet's transducer task to the plugin's builders (idempotent)."""
    check_espnet_version()
    _import_without_flash_attn_notice()
    import espnet2.tasks.abs_task as abs_task
    import espnet2.tasks.asr_transducer as transducer_task

    from espnet_rwkv.asr.context_decoder import ContextDecoder
    from espnet_rwkv.asr.encoder import build_encoder
    from espnet_rwkv.asr.kaldi_fbank import KaldiFbank
    from espnet_rwkv.asr.model import TransducerModel

    transducer_task.Encoder = build_encoder
    transducer_task.ESPnetASRTransducerModel = TransducerModel
    transducer_task.frontend_choices.classes["kaldi_fbank"] = KaldiFbank
    transducer_task.decoder_choices.classes["stateless_context"] = ContextDecoder
    if not getattr(abs_task.collect_stats, "names_utterances", False):
        abs_task.collect_stats = _collect_stats_naming_utterances(abs_task.collect_stats)
