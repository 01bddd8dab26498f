"""A small ESPnet transducer experiment, as asr.sh's training leaves it, and its packed zip.

For tests of what follows training (decoding configs, packing, the model card):
the model is built from a test config and keeps its random initial weights.
"""

import subprocess
import sys
from pathlib import Path

import torch
from espnet2.tasks.asr_transducer import ASRTransducerTask
from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin)

CONF = Path(__file__).parent / "conf"
TOKENS = ["<blank>", "<unk>", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'", "<space>", "<sos/eos>"]
MODEL_FILE = "valid.loss.ave.pth"
RESULTS = (
    "# RESULTS\n## asr_tiny\n|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|\n|---|---|---|---|---|---|---|---|---|\n"
)


def make_exp(root: Path, config: str, name: str = "asr_tiny") -> Path:
    """``root/exp/<name>`` with config.yaml (written as ESPnet's trainer writes it), the model and RESULTS.md."""
    exp = root / "exp" / name
    exp.mkdir(parents=True)
    token_list = root / "tokens.txt"
    token_list.write_text("\n".join(TOKENS) + "\n")
    args = ASRTransducerTask.get_parser().parse_args(
        [
            "--config",
            str(CONF / config),
            "--token_list",
            str(token_list),
            "--token_type",
            "char",
            "--output_dir",
            str(exp),
        ]
    )
    torch.manual_seed(0)
    model = ASRTransducerTask.build_model(args)
    with open(exp / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f, indent=4, sort_keys=False)
    torch.save(model.state_dict(), exp / MODEL_FILE)
    (exp / "RESULTS.md").write_text(RESULTS.replace("asr_tiny", name))
    return exp


def pack(root: Path, exp: Path) -> Path:
    """``espnet2.bin.pack`` as asr.sh's stage 14 runs it (from the recipe directory, relative paths)."""
    exp = exp.relative_to(root)
    packed = exp / f"{exp.name}_{Path(MODEL_FILE).stem}.zip"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "espnet2.bin.pack",
            "asr",
            "--asr_train_config",
            exp / "config.yaml",
            "--asr_model_file",
            exp / MODEL_FILE,
            "--option",
            exp / "RESULTS.md",
            "--outpath",
            packed,
        ],
        cwd=root,
        check=True,
        capture_output=True,
    )
    return root / packed
