"""The synth_en recipe: configs build and step through ESPnet, local/data.sh makes valid data dirs."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch

import espnet_rwkv  # noqa: F401  (registers the plugin, as the recipe's launcher does)
from espnet2.tasks.asr_transducer import ASRTransducerTask

EGS2 = Path(__file__).resolve().parents[1] / "egs2"
RECIPE = EGS2 / "synth_en" / "asr1"
TRAIN_CONFIGS = sorted(EGS2.glob("*/asr1/conf/tuning/train_*.yaml"))
TOKENS = ["<blank>", "<unk>", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'", "<space>", "<sos/eos>"]


def build_from_config(path: Path, tmp_path: Path):
    token_list = tmp_path / "tokens.txt"
    token_list.write_text("\n".join(TOKENS) + "\n")
    args = ASRTransducerTask.get_parser().parse_args(
        ["--config", str(path), "--token_list", str(token_list), "--output_dir", str(tmp_path)]
    )
    return ASRTransducerTask.build_model(args)


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: f"{p.parts[-5]}/{p.name}")
def test_config_builds_and_steps(config, tmp_path):
    model = build_from_config(config, tmp_path)
    speech = torch.randn(2, 16000)
    loss, stats, _ = model(speech, torch.tensor([16000, 12000]), torch.tensor([[2, 3, 4], [5, 6, -1]]), torch.tensor([3, 2]))
    assert torch.isfinite(loss)
    loss.backward()


def test_demo_systems_share_a_parameter_budget(tmp_path):
    sizes = {name: sum(p.numel() for p in build_from_config(RECIPE / "conf" / f"{name}.yaml", tmp_path).parameters())
             for name in ("train_rwkv_bat", "train_conformer_chunk")}
    assert abs(sizes["train_rwkv_bat"] / sizes["train_conformer_chunk"] - 1) <= 0.10, sizes


def test_train_configs_are_linked_from_tuning():
    for name in ("train_rwkv_bat.yaml", "train_conformer_chunk.yaml"):
        link = RECIPE / "conf" / name
        assert link.is_symlink() and os.readlink(link) == f"tuning/{name}"


@pytest.fixture(scope="module")
def synth_tools():
    missing = [t for t in ("espeak-ng", "flite", "sox") if shutil.which(t) is None]
    if missing or not Path("/usr/share/games/fortunes").is_dir():
        pytest.skip(f"missing {missing or 'fortunes'} (the README's set-up command installs them)")


def run_data_sh(workdir: Path):
    """local/data.sh as asr.sh stage 1 runs it (path.sh puts the venv first), in a copy of local/."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "local/data.sh", "--num_train", "12", "--num_dev", "3", "--num_test", "3", "--nj", "2"],
        cwd=workdir, capture_output=True, text=True, check=True, env=env,
    )


@pytest.fixture
def workdir(tmp_path, synth_tools):
    shutil.copytree(RECIPE / "local", tmp_path / "local")
    return tmp_path


def read_table(path: Path):
    lines = path.read_text().splitlines()
    return [line.split(" ", 1) for line in lines]


def validate_kaldi_dir(data: Path):
    tables = {name: read_table(data / name) for name in ("wav.scp", "text", "utt2spk")}
    ids = [row[0] for row in tables["wav.scp"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for name, rows in tables.items():
        assert [row[0] for row in rows] == ids, f"{name} ids differ from wav.scp"
    for utt, spk in tables["utt2spk"]:
        assert utt.startswith(spk + "-"), "Kaldi sorting needs speaker-prefixed utterance ids"
    spk2utt = {spk: utts.split() for spk, utts in read_table(data / "spk2utt")}
    assert sorted(u for utts in spk2utt.values() for u in utts) == ids
    for utt, text in tables["text"]:
        assert re.fullmatch(r"[A-Z']+( [A-Z']+){2,19}", text), (utt, text)
    for utt, path in tables["wav.scp"]:
        audio, rate = soundfile.read(path)
        assert rate == 16000 and audio.ndim == 1 and audio.size > 1600, utt
    return tables


def test_data_sh_makes_valid_disjoint_sets(workdir):
    run_data_sh(workdir)
    tables = {split: validate_kaldi_dir(workdir / "data" / split) for split in ("train", "dev", "test")}
    sentences = {split: {text for _, text in t["text"]} for split, t in tables.items()}
    speakers = {split: {spk for _, spk in t["utt2spk"]} for split, t in tables.items()}
    assert not sentences["train"] & sentences["dev"] and not sentences["train"] & sentences["test"]
    assert not sentences["dev"] & sentences["test"]
    assert not speakers["test"] & (speakers["train"] | speakers["dev"]), "test voices must be unseen"


def snapshot(workdir: Path):
    return {p.relative_to(workdir): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file() and "local" not in p.parts}


def test_data_sh_reruns_identically_and_resumes(workdir):
    run_data_sh(workdir)
    first = snapshot(workdir)
    run_data_sh(workdir)
    assert snapshot(workdir) == first, "a second run must not change or duplicate anything"

    # An interrupted run: a wav never finished (only its partial file exists) and a table was not written.
    wav = next((workdir / "downloads" / "synth_en" / "train").glob("*.wav"))
    wav.rename(wav.with_suffix(".partial.wav"))
    (workdir / "data" / "train" / "text").unlink()
    run_data_sh(workdir)
    assert snapshot(workdir) == first, "the resumed run must finish the same corpus, with no partial file left"
