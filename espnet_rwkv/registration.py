"""Everything espnet_rwkv changes in ESPnet, in one place (docs/espnet.md).

ESPnet 202611 has no plugin registry: ``ASRTransducerTask.build_model`` calls
the names ``Encoder`` and ``ESPnetASRTransducerModel`` of its own module. We
rebind those two names, nothing else, and edit no installed file:

- ``Encoder`` -> ``build_encoder``: ESPnet's encoder for built-in bodies, the
  RWKV encoder for ``block_type: rwkv``;
- ``ESPnetASRTransducerModel`` -> ``TransducerModel``: ESPnet's model with a
  selectable transducer loss (``model_conf.transducer_loss``) and strict
  checkpoint loading.

and add one choice, ``frontend: kaldi_fbank`` (``KaldiFbank``, the features
sherpa-onnx computes), to the task's ``frontend_choices``.

Every ESPnet entry point that builds a transducer model (training, collect
stats, inference, packing, ``Speech2Text.from_pretrained``) goes through
``build_model``, so it sees both once ``register()`` has run. Called through
``espnet_rwkv.register()``; importing this module changes nothing yet.
"""

import contextlib
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


def register() -> None:
    """Rebind ESPnet's transducer task to the plugin's builders (idempotent)."""
    check_espnet_version()
    _import_without_flash_attn_notice()
    import espnet2.tasks.asr_transducer as transducer_task

    from espnet_rwkv.asr.encoder import build_encoder
    from espnet_rwkv.asr.kaldi_fbank import KaldiFbank
    from espnet_rwkv.asr.model import TransducerModel

    transducer_task.Encoder = build_encoder
    transducer_task.ESPnetASRTransducerModel = TransducerModel
    transducer_task.frontend_choices.classes["kaldi_fbank"] = KaldiFbank
