"""End to end through ESPnet's own entry points, on real synthesized speech.

espeak-ng speaks 20 short sentences in three voices; ESPnet's tools make the
token list; ``espnet_rwkv.launch`` runs collect_stats, a few training epochs,
decoding and packing exactly as asr.sh would call them; the packed zip is
reloaded with ``Speech2Text.from_pretrained`` and must decode identically.
Both an RWKV model and ESPnet's built-in chunk conformer go through it.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch

CONF = Path(__file__).parent / "conf"
SENTENCES = [
    "THE CAT SAT ON THE MAT",
    "A BIRD IN THE HAND",
    "TIME FLIES LIKE AN ARROW",
    "KEEP CALM AND CARRY ON",
    "ALL THAT GLITTERS IS NOT GOLD",
    "BETTER LATE THAN NEVER",
    "EASY COME EASY GO",
    "NO NEWS IS GOOD NEWS",
    "ACTIONS SPEAK LOUDER THAN WORDS",
    "TWO HEADS ARE BETTER THAN ONE",
    "THE EARLY BIRD CATCHES THE WORM",
    "SEEING IS BELIEVING",
    "PRACTICE MAKES PERFECT",
    "WHEN IN ROME",
    "LOOK BEFORE YOU LEAP",
    "KNOWLEDGE IS POWER",
    "HASTE MAKES WASTE",
    "SILENCE IS GOLDEN",
    "OUT OF SIGHT OUT OF MIND",
    "TIME IS MONEY",
]
VOICES = ["en-us", "en-gb", "en-us+f3"]


def launch(module, *args, log):
    """Run ``python -m espnet_rwkv.launch -m <module> args``, as asr.sh's --python does."""
    cmd = [sys.executable, "-m", "espnet_rwkv.launch", "-m", module, *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    Path(log).write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}); last output:\n{result.stderr[-3000:]}")
    return result.stderr


def write_data_dir(path: Path, items):
    path.mkdir(parents=True)
    with open(path / "wav.scp", "w") as wav, open(path / "text", "w") as text:
        for utt, wav_path, sentence in sorted(items):
            wav.write(f"{utt} {wav_path}\n")
            text.write(f"{utt} {sentence}\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, espeak):
    root = tmp_path_factory.mktemp("corpus")
    items = []
    for i, sentence in enumerate(SENTENCES):
        voice = VOICES[i % len(VOICES)]
        utt = f"spk{i % len(VOICES)}-utt{i:02d}"
        raw, wav = root / f"{utt}.raw.wav", root / f"{utt}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw, sentence.lower()], check=True)
        subprocess.run(["sox", raw, "-r", "16000", "-c", "1", "-b", "16", wav], check=True)
        raw.unlink()
        items.append((utt, wav, sentence))
    write_data_dir(root / "train", items[:16])
    write_data_dir(root / "valid", items[16:])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "espnet2.bin.tokenize_text",
            "--token_type",
            "char",
            "--input",
            root / "train" / "text",
            "--output",
            root / "tokens.txt",
            "--field",
            "2-",
            "--write_vocabulary",
            "true",
            "--add_symbol",
            "<blank>:0",
            "--add_symbol",
            "<unk>:1",
            "--add_symbol",
            "<sos/eos>:-1",
        ],
        check=True,
        capture_output=True,
    )
    return root


def data_args(corpus):
    args = []
    for split in ("train", "valid"):
        args += [
            f"--{split}_data_path_and_name_and_type",
            f"{corpus / split / 'wav.scp'},speech,sound",
            f"--{split}_data_path_and_name_and_type",
            f"{corpus / split / 'text'},text,text",
        ]
    return args


def epoch_losses(log: str, name: str = "loss"):
    """Train value per epoch from ESPnet's '<n>epoch results: [train] ... <name>=...' lines."""
    return [float(m) for m in re.findall(rf"epoch results: \[train\].*? {name}=([-\d.e+]+)", log)]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tiny_rwkv.yaml", "tiny_rwkv_bat.yaml", "tiny_conformer_chunk.yaml"])
def test_collect_stats_train_decode_pack_reload(corpus, config, tmp_path):
    common = [
        "--token_list",
        corpus / "tokens.txt",
        "--token_type",
        "char",
        "--ngpu",
        0,
        "--num_workers",
        0,
        "--config",
        CONF / config,
        *data_args(corpus),
    ]
    stats = tmp_path / "stats"
    launch(
        "espnet2.bin.asr_transducer_train",
        *common,
        "--collect_stats",
        "true",
        "--batch_type",
        "unsorted",
        "--batch_size",
        4,
        "--train_shape_file",
        corpus / "train" / "wav.scp",
        "--valid_shape_file",
        corpus / "valid" / "wav.scp",
        "--output_dir",
        stats,
        log=tmp_path / "stats.log",
    )
    feats_stats = stats / "train" / "feats_stats.npz"
    assert feats_stats.exists()

    exp = tmp_path / "exp"
    log = launch(
        "espnet2.bin.asr_transducer_train",
        *common,
        "--normalize",
        "global_mvn",
        "--normalize_conf",
        f"stats_file={feats_stats}",
        "--batch_type",
        "sorted",
        "--batch_size",
        4,
        "--train_shape_file",
        stats / "train" / "speech_shape",
        "--valid_shape_file",
        stats / "valid" / "speech_shape",
        "--max_epoch",
        6,
        "--optim",
        "adam",
        "--optim_conf",
        "lr=0.005",
        "--seed",
        0,
        "--use_tensorboard",
        "false",
        "--use_matplotlib",
        "false",
        "--num_att_plot",
        0,
        "--keep_nbest_models",
        1,
        "--output_dir",
        exp,
        log=tmp_path / "train.log",
    )
    names = ["loss", "loss_transducer"] + (["loss_quantity"] if "bat" in config else [])
    for name in names:
        losses = epoch_losses(log, name)
        print(f"{config}: train {name} per epoch {losses}")
        assert len(losses) == 6 and torch.isfinite(torch.tensor(losses)).all()
        assert losses[-1] < 0.8 * losses[0], name
    model_file = exp / "valid.loss.best.pth"

    decode = tmp_path / "decode"
    launch(
        "espnet2.bin.asr_transducer_inference",
        "--asr_train_config",
        exp / "config.yaml",
        "--asr_model_file",
        model_file,
        "--data_path_and_name_and_type",
        f"{corpus / 'valid' / 'wav.scp'},speech,sound",
        "--output_dir",
        decode,
        "--batch_size",
        1,
        "--ngpu",
        0,
        "--beam_size",
        2,
        log=tmp_path / "decode.log",
    )
    best = decode / "1best_recog"
    decoded = dict((line + " ").split(" ", 1) for line in (best / "token_int").read_text().splitlines())
    scores = dict(line.split() for line in (best / "score").read_text().splitlines())
    assert len(decoded) == len(scores) == 4

    packed = tmp_path / "packed.zip"
    launch(
        "espnet2.bin.pack",
        "asr",
        "--asr_train_config",
        exp / "config.yaml",
        "--asr_model_file",
        model_file,
        "--option",
        feats_stats,
        "--outpath",
        packed,
        log=tmp_path / "pack.log",
    )

    # Reload in this process, as a user would after `import espnet_rwkv.espnet`.
    from espnet2.bin.asr_transducer_inference import Speech2Text

    import espnet_rwkv.espnet  # noqa: F401

    speech2text = Speech2Text.from_pretrained(model_tag=str(packed), beam_size=2)
    for line in (corpus / "valid" / "wav.scp").read_text().splitlines():
        utt, path = line.split()
        speech, rate = soundfile.read(path)
        assert rate == 16000
        _, _, token_int, hyp = speech2text.hypotheses_to_results(speech2text(speech))[0]
        assert " ".join(map(str, token_int)) == decoded[utt].strip(), utt
        assert hyp.score == pytest.approx(float(scores[utt]), rel=1e-4), utt

    # Without the plugin ESPnet cannot rebuild the model, and says so instead of loading it wrong.
    without_plugin = subprocess.run(
        [
            sys.executable,
            "-c",
            "from espnet2.bin.asr_transducer_inference import Speech2Text; "
            f"Speech2Text.from_pretrained(model_tag={str(packed)!r})",
        ],
        capture_output=True,
        text=True,
    )
    assert without_plugin.returncode != 0
    expected = (
        "Block type: rwkv is not supported" if "rwkv" in config else "unexpected keyword argument 'transducer_loss'"
    )
    assert expected in without_plugin.stderr


def test_empty_transcript_line_is_reported(corpus, tmp_path):
    """ESPnet's loader refuses a transcript line without text and names it; nothing is trained."""
    lines = (corpus / "train" / "text").read_text().splitlines()
    empty_utt = lines[3].split()[0]
    lines[3] = empty_utt
    bad = tmp_path / "train"
    bad.mkdir()
    (bad / "text").write_text("\n".join(lines) + "\n")
    (bad / "wav.scp").write_text((corpus / "train" / "wav.scp").read_text())
    args = data_args(corpus)
    args[args.index(f"{corpus / 'train' / 'text'},text,text")] = f"{bad / 'text'},text,text"
    with pytest.raises(AssertionError, match=rf"doesn't include a space: .*: {empty_utt}"):
        launch(
            "espnet2.bin.asr_transducer_train",
            "--token_list",
            corpus / "tokens.txt",
            "--token_type",
            "char",
            "--ngpu",
            0,
            "--num_workers",
            0,
            "--config",
            CONF / "tiny_rwkv.yaml",
            *args,
            "--collect_stats",
            "true",
            "--batch_type",
            "unsorted",
            "--batch_size",
            4,
            "--train_shape_file",
            bad / "wav.scp",
            "--valid_shape_file",
            corpus / "valid" / "wav.scp",
            "--output_dir",
            tmp_path / "stats",
            log=tmp_path / "stats.log",
        )
    assert not (tmp_path / "stats" / "train" / "feats_stats.npz").exists()
