"""Random-weight experiments of deployable configs (kaldi_fbank features), for the ONNX and front-end tests."""

import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
import yaml
from espnet2.tasks.asr_transducer import ASRTransducerTask

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin in ESPnet)

CONF = Path(__file__).parent / "conf"
RATE = 16000
# ESPnet's char token list: blank first, <space> for the space, <sos/eos> last.
TOKENS = ["<blank>", "<unk>", "<space>", *"ETAONIHSRDLUCMWFGYPBVK", "<sos/eos>"]
TEXT = "the quick brown fox jumps over the lazy dog. a journey of a thousand miles begins with one step."


def espeak_speech(text: str = TEXT, voice: str = "en-us") -> np.ndarray:
    """espeak-ng reading ``text``, float32 at 16 kHz in [-1, 1]."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, RATE).numpy()


def make_exp(path: Path, config="tiny_rwkv_bat_deployable.yaml", blank_bias: float = 0.0, **overrides) -> Path:
    """``path`` as a recipe's exp dir: config.yaml, model.pth, global MVN stats; random weights.

    ``config``: a file of test/conf, or a path (a recipe's config).

    The RWKV blocks' zero-initialized output projections are randomized so that
    every state matters; ``blank_bias`` is added to the joint network's blank
    output (a random model otherwise emits a label at most frames).
    """
    path.mkdir(parents=True)
    (path / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    args = ASRTransducerTask.get_parser().parse_args(
        [
            "--config",
            str(CONF / config),
            "--token_list",
            str(path / "tokens.txt"),
            "--token_type",
            "char",
            "--output_dir",
            str(path),
        ]
    )
    for key, value in overrides.items():
        setattr(args, key, value)
    g = np.random.default_rng(0)
    dim = 80
    mean = g.normal(-8.0, 1.0, dim)
    np.savez(path / "stats.npz", count=np.array(100.0), sum=100 * mean, sum_square=100 * (mean**2 + 9.0))
    args.normalize, args.normalize_conf = "global_mvn", {"stats_file": str(path / "stats.npz")}
    torch.manual_seed(0)
    model = ASRTransducerTask.build_model(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("time_mix.output.weight", "channel_mix.value.weight")):
                torch.nn.init.normal_(p, std=p.size(1) ** -0.5)
        model.joint_network.lin_out.bias[0] += blank_bias
    (path / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    torch.save(model.state_dict(), path / "model.pth")
    return path
