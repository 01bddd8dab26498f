"""Everything espnet_rwkv changes in ESPnet, in one place.

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
``build_model``, so it sees both once this module has run.
"""
import espnet2.tasks.asr_transducer as transducer_task

from espnet_rwkv.asr.encoder import build_encoder
from espnet_rwkv.asr.kaldi_fbank import KaldiFbank
from espnet_rwkv.asr.model import TransducerModel


def register() -> None:
    """Rebind ESPnet's transducer task to the plugin's builders (idempotent)."""
    transducer_task.Encoder = build_encoder
    transducer_task.ESPnetASRTransducerModel = TransducerModel
    transducer_task.frontend_choices.classes["kaldi_fbank"] = KaldiFbank
