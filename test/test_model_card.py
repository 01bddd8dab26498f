"""espnet_rwkv.model_card on a zip that ESPnet's pack wrote, as the recipes run it after stage 14."""

import importlib.metadata
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from espnet2.bin.asr_transducer_inference import Speech2Text
from espnet2.tasks.asr_transducer import ASRTransducerTask
from packed_model import MODEL_FILE, make_exp, pack, show_asr_result

import espnet_rwkv
from espnet_rwkv.model_card import add_card, needs_plugin


def run_model_card(root, exp, packed):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "espnet_rwkv.model_card",
            "--asr_exp",
            exp,
            "--packed_model",
            packed,
            "--lang",
            "en",
            "--corpus",
            "tiny_corpus",
        ],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(recipe dir, exp dir, zip as packed, zip after model_card)."""
    root = tmp_path_factory.mktemp("recipe")
    exp = make_exp(root, "tiny_rwkv_bat.yaml")
    zip_path = pack(root, exp)
    original = zip_path.read_bytes()
    run_model_card(root, exp, zip_path)
    return root, exp, original, zip_path


def members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_card_says_what_the_model_needs(packed):
    _, exp, _, zip_path = packed
    card = members(zip_path)["README.md"].decode()
    meta = yaml.safe_load(members(zip_path)["meta.yaml"])
    assert card.startswith("---\nlibrary_name: espnet\n")
    assert "**Loading it needs espnet_rwkv:**" in card
    for package, version in [
        ("espnet_rwkv", espnet_rwkv.__version__),
        ("espnet", meta["espnet"]),
        ("torch", meta["torch"]),
    ]:
        assert f"| {package} | {version} |" in card
    assert "import espnet_rwkv.espnet  # first" in card
    assert "encoder: 2 × rwkv (32), subsampling ×4" in card and "transducer loss: bat" in card
    model, _ = ASRTransducerTask.build_model_from_file(exp / "config.yaml", exp / MODEL_FILE)
    assert f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M" in card
    assert "|decode_full/test|4|20|0.0|100.0|0.0|0.0|100.0|100.0|" in card  # RESULTS.md's WER row


def test_meta_yaml_keeps_espnet_keys_and_adds_the_plugin(packed):
    _, _, original, zip_path = packed
    before = yaml.safe_load(zipfile.ZipFile(io.BytesIO(original)).read("meta.yaml"))
    after = yaml.safe_load(members(zip_path)["meta.yaml"])
    assert {k: after[k] for k in before} == before
    assert after["espnet_rwkv"] == espnet_rwkv.__version__
    torch_version = before["torch"].split("+")[0]
    assert after["requirements"][:3] == [
        f"espnet_rwkv=={espnet_rwkv.__version__}",
        f"espnet=={before['espnet']}",
        f"torch=={torch_version}",
    ]


def test_packed_model_still_loads_and_decodes_the_same(packed):
    root, exp, _, zip_path = packed
    speech = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    direct = Speech2Text(asr_train_config=exp / "config.yaml", asr_model_file=exp / MODEL_FILE, beam_size=2)
    loaded = Speech2Text.from_pretrained(model_tag=str(zip_path), beam_size=2)
    expected, got = direct(speech)[0], loaded(speech)[0]
    assert got.yseq == expected.yseq and got.score == pytest.approx(expected.score, rel=1e-5)


def test_hf_folder_is_the_zip_with_its_card(packed):
    _, exp, _, zip_path = packed
    folder = exp / "hf_upload"
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert files == members(zip_path)
    assert "README.md" in files and "meta.yaml" in files


def test_second_run_replaces_what_the_first_added(packed):
    root, exp, _, zip_path = packed
    first = members(zip_path)
    (exp / "hf_upload" / "stale.txt").write_text("from an earlier run")
    run_model_card(root, exp, zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
    assert len(names) == len(set(names))
    second = members(zip_path)
    assert second.keys() == first.keys()
    assert {k: v for k, v in second.items() if k != "meta.yaml"} == {k: v for k, v in first.items() if k != "meta.yaml"}
    assert not (exp / "hf_upload" / "stale.txt").exists()


def test_which_configs_need_the_plugin():
    conformer = {"encoder_conf": {"body_conf": [{"block_type": "conformer", "hidden_size": 8}]}, "model_conf": {}}
    assert not needs_plugin(conformer)
    assert needs_plugin({**conformer, "model_conf": {"transducer_loss": "rnnt"}})
    assert needs_plugin({"encoder_conf": {"body_conf": [{"block_type": "rwkv", "hidden_size": 8}]}})


def test_card_of_a_conformer_with_the_plugin_loss(tmp_path):
    exp = make_exp(tmp_path, "tiny_conformer_chunk.yaml", name="asr_conformer")
    zip_path = pack(tmp_path, exp)
    run_model_card(tmp_path, exp, zip_path)
    card = (exp / "hf_upload" / "README.md").read_text()
    assert "encoder: 2 × conformer (32)" in card and "transducer loss: rnnt" in card
    assert "**Loading it needs espnet_rwkv:**" in card  # the transducer_loss option is the plugin's


def markdown_lines(card):
    """The card's markdown lines: front matter and fenced code blocks left out."""
    body = card.split("---\n", 2)[2]
    lines, fenced = [], False
    for line in body.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def test_front_matter_files_it_under_speech_recognition(packed):
    card = members(packed[3])["README.md"].decode()
    front = yaml.safe_load(card.split("---\n", 2)[1])
    assert front["pipeline_tag"] == "automatic-speech-recognition"
    assert front["library_name"] == "espnet" and "espnet" in front["tags"]
    assert front["language"] == "en" and front["datasets"] == ["tiny_corpus"] and front["license"] == "cc-by-4.0"


def test_card_has_one_h1_and_results_headings_below_its_results(packed):
    card = members(packed[3])["README.md"].decode()
    lines = markdown_lines(card)
    assert [line for line in lines if line.startswith("# ")] == ["# tiny_corpus: asr_tiny"]
    results = lines[lines.index("## Results") + 1 : lines.index("## Training config")]
    headings = [line for line in results if line.startswith("#")]
    assert headings == ["### RESULTS", "#### Environments", "#### exp/asr_tiny", "##### WER"]


def test_card_has_no_table_without_data_rows(packed):
    card = members(packed[3])["README.md"].decode()
    tables, previous = [], ""
    for line in markdown_lines(card):
        if line.startswith("|"):
            if previous.startswith("|"):
                tables[-1].append(line)
            else:
                tables.append([line])
        previous = line
    assert len(tables) == 2, "the versions and RESULTS.md's WER; its CER and TER tables had no rows"
    assert all(len(table) > 2 and re.fullmatch(r"\|[-|]+\|", table[1]) for table in tables)


def test_install_line_uses_the_package_url(packed):
    card = members(packed[3])["README.md"].decode()
    meta = yaml.safe_load(members(packed[3])["meta.yaml"])
    url = importlib.metadata.metadata("espnet_rwkv")["Home-page"]
    setup_py = (Path(__file__).parents[1] / "setup.py").read_text()
    assert f'url="{url}"' in setup_py, "the installed metadata is setup.py's (else: pip install -e . again)"
    torch_version = meta["torch"].split("+")[0]
    assert (
        f'pip install "espnet_rwkv @ git+{url}" espnet=={meta["espnet"]} torch=={torch_version} torchaudio=='
    ) in card


def caveat(card):
    return [line for line in markdown_lines(card) if line.startswith("Not for transcription")]


def test_card_warns_when_the_wer_says_the_model_is_unusable(packed, tmp_path):
    card = members(packed[3])["README.md"].decode()
    lines = markdown_lines(card)
    assert caveat(card) == [
        "Not for transcription: its best WER is 100.0 %, so this model did not learn the task "
        "(e.g. a short training run that checks the pipeline)."
    ]
    assert lines.index(caveat(card)[0]) < lines.index("## Model"), "near the top"

    exp = tmp_path / "asr_tiny"
    exp.mkdir()
    (exp / "RESULTS.md").write_text(show_asr_result("exp/asr_tiny", wer=5.0))
    zip_path = Path(shutil.copy(packed[3], tmp_path / "packed.zip"))
    card = add_card(exp, zip_path, "en", "tiny_corpus")
    assert not caveat(card) and "|decode_full/test|4|20|95.0|5.0|0.0|0.0|5.0|100.0|" in card
