"""The recipes in egs2/: every config builds and steps through ESPnet with the plugin, every decode
config is a Speech2Text setting that runs, run.sh drives asr.sh through the stages it should, and
local/data.sh makes valid data dirs (synth_en) or runs ESPnet's own data preparation (the others)."""

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from espnet2.bin import asr_transducer_inference
from espnet2.bin.asr_transducer_inference import Speech2Text
from espnet2.tasks.asr_transducer import ASRTransducerTask
from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump
from packed_model import make_exp, pack

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin, as the recipes' launcher does)

EGS2 = Path(__file__).resolve().parents[1] / "egs2"
TEMPLATE = EGS2 / "TEMPLATE" / "asr1"
RECIPE = EGS2 / "synth_en" / "asr1"
RECIPES = sorted(p.parent for p in EGS2.glob("*/asr1/run.sh"))
RUNTIME_DIRS = {"data", "dump", "exp", "downloads", ".espnet", "utils", "steps", "scripts", "pyscripts"}


def recipe_yamls():
    """Every yaml file under egs2/ but the directories that runs and TEMPLATE/asr1/setup_recipe.sh create."""
    found = []
    for top, dirs, files in os.walk(EGS2):
        dirs[:] = [d for d in dirs if d not in RUNTIME_DIRS]
        found += [Path(top) / f for f in files if f.endswith((".yaml", ".yml"))]
    return sorted(found)


YAMLS = recipe_yamls()
# A paper recipe's training configs are in conf/tuning, linked from conf/; synth_en's in conf/<task>/.
TRAIN_CONFIGS = [p for p in YAMLS if p.parent.name != "conf" and p.name.startswith("train_")]
TRAIN_LINKS = [p for p in YAMLS if p.parent.name == "conf" and p.name.startswith("train_")]
DECODE_CONFIGS = [p for p in YAMLS if p.parent.name == "conf" and p.name.startswith("decode_")]
# The one decode a recipe leaves out, and why (see its run.sh): ESPnet 202611's chunk conformer with
# n_fft 512 has no encoder frame in a first 160 ms window.
LEFT_OUT = {("synth_en", "conformer_chunk"): {"streaming_160ms"}}
ALL_DECODES = {"full", "streaming_160ms", "streaming_320ms", "streaming_640ms"}


def recipe_id(path: Path) -> str:
    parts = path.relative_to(EGS2).parts
    return "/".join([parts[0], *parts[3:-1], path.name]) if parts[3:-1] != ("tuning",) else f"{parts[0]}/{path.name}"


def test_every_yaml_is_a_train_config_a_link_to_one_or_a_decode_config():
    assert TRAIN_CONFIGS and DECODE_CONFIGS
    assert sorted(TRAIN_CONFIGS + TRAIN_LINKS + DECODE_CONFIGS) == YAMLS


def test_train_configs_are_linked_from_tuning():
    for config in [p for p in TRAIN_CONFIGS if p.parent.name == "tuning"]:
        link = config.parents[1] / config.name
        assert link.is_symlink() and os.readlink(link) == f"tuning/{config.name}", link
    assert {link.resolve() for link in TRAIN_LINKS} == {p for p in TRAIN_CONFIGS if p.parent.name == "tuning"}


BUDGET = re.compile(r"^# Parameters with (?:a|the) (\d+)\D.*?: ([\d.]+) M; (train_\w+\.yaml): ([\d.]+) M\.$", re.M)


def stated_budget(config: Path):
    """(vocabulary size, own parameters in M, other config, its parameters in M) from the header comment."""
    match = BUDGET.search(config.read_text())
    assert match, f"{config}: no '# Parameters with <N> ...: <M> M; <other>.yaml: <M> M.' line"
    return int(match[1]), float(match[2]), match[3], float(match[4])


def token_list(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(["<blank>", "<unk>", *(f"tok{i}" for i in range(size - 3)), "<sos/eos>"]) + "\n")
    return path


def parse_train_config(config: Path, tmp_path: Path, vocab: int):
    return ASRTransducerTask.get_parser().parse_args(
        [
            "--config",
            str(config),
            "--token_list",
            str(token_list(tmp_path, vocab)),
            "--token_type",
            "char",
            "--output_dir",
            str(tmp_path),
        ]
    )


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=recipe_id)
def test_train_config_builds_with_its_stated_size_and_steps(config, tmp_path):
    vocab, millions, _, _ = stated_budget(config)
    model = ASRTransducerTask.build_model(parse_train_config(config, tmp_path, vocab))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)
    speech = torch.randn(2, 16000)
    loss, _, _ = model(
        speech, torch.tensor([16000, 12000]), torch.tensor([[2, 3, 4], [5, 6, -1]]), torch.tensor([3, 2])
    )
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


CONFIG_DIRS = sorted({p.parent for p in TRAIN_CONFIGS})


@pytest.mark.parametrize("config_dir", CONFIG_DIRS, ids=lambda d: str(d.relative_to(EGS2)))
def test_systems_share_a_parameter_budget_and_a_frontend(config_dir):
    configs = {p.name: p for p in TRAIN_CONFIGS if p.parent == config_dir}
    assert {"train_rwkv_bat.yaml", "train_conformer_chunk.yaml"} <= configs.keys()
    budgets = {name: stated_budget(path) for name, path in configs.items()}
    for name, (vocab, _millions, other, other_millions) in budgets.items():
        assert budgets[other][0] == vocab and budgets[other][1] == other_millions, f"{name} states {other} wrongly"
    rwkv, conformer = budgets["train_rwkv_bat.yaml"][1], budgets["train_conformer_chunk.yaml"][1]
    assert abs(rwkv / conformer - 1) <= 0.10
    # run.sh collects the feature statistics once, with the first system's config, for all of them.
    settings = [yaml.safe_load(path.read_text()) for path in configs.values()]
    for key in ("frontend", "frontend_conf", "normalize", "normalize_conf"):
        assert len({repr(s.get(key)) for s in settings}) == 1, key


def run_sh_decodes(recipe: Path, task: str = ""):
    """{system: [decode, ...]} from run.sh's ``declare -A decodes=(...)`` (the one of ``task)``, in synth_en)."""
    text = (recipe / "run.sh").read_text()
    if task:
        text = text[text.index(f"    {task})") :]
    block = re.search(r"declare -A decodes=\((.*?)\n *\)", text, re.S)[1]
    return {system: names.split() for system, names in re.findall(r'\[(\w+)\]="([^"]*)"', block)}


# The recipes' decodes, and the training configs they decode: synth_en's digits task (the CPU's) decodes
# full utterances and 320 ms windows; every other decodes every window.
RUN_SH_TASKS = [(r, "") for r in RECIPES if r != RECIPE] + [(RECIPE, "digits"), (RECIPE, "sentences")]


def task_id(recipe_task):
    recipe, task = recipe_task
    return "/".join(filter(None, [recipe.parent.name, task]))


def train_config(recipe: Path, task: str, system: str) -> Path:
    return recipe / "conf" / task / f"train_{system}.yaml"


@pytest.mark.parametrize("recipe_task", RUN_SH_TASKS, ids=task_id)
def test_run_sh_decodes_every_window_and_full(recipe_task):
    recipe, task = recipe_task
    decodes = run_sh_decodes(recipe, task)
    assert decodes.keys() == {"rwkv_bat", "conformer_chunk"}
    for system, names in decodes.items():
        assert train_config(recipe, task, system).is_file()
        expected = {"full", "streaming_320ms"} if task == "digits" else ALL_DECODES
        assert set(names) == expected - LEFT_OUT.get((recipe.parent.name, system), set()), system
        for name in names:
            assert (recipe / "conf" / f"decode_{name}.yaml").is_file()


def stream(speech2text: Speech2Text, speech: np.ndarray):
    """Decode as asr_transducer_inference does with --streaming: window by window, the rest last."""
    step = speech2text.audio_processor.decoding_samples
    windows = len(speech) // step
    for i in range(windows + 1):
        hyps = speech2text.streaming_decode(speech[i * step : (i + 1) * step], is_final=i == windows)
    return hyps


@pytest.mark.parametrize("config", DECODE_CONFIGS, ids=recipe_id)
def test_decode_config_is_a_speech2text_setting(config):
    settings = yaml.safe_load(config.read_text())
    # asr.sh passes it as --config: ESPnet's parser refuses keys it does not know.
    asr_transducer_inference.get_parser().parse_args(
        ["--config", str(config), "--output_dir", "out", "--data_path_and_name_and_type", "wav.scp,speech,sound"]
    )
    assert set(settings) <= set(inspect.signature(Speech2Text.__init__).parameters) | {"display_hypotheses"}
    name = config.stem[len("decode_") :]
    if name == "full":
        assert not settings.get("streaming", False)
    else:
        window = re.fullmatch(r"streaming_(\d+)ms", name)
        assert window and settings["streaming"] is True and settings["decoding_window"] == int(window[1])


@pytest.mark.slow
@pytest.mark.parametrize("recipe_task", RUN_SH_TASKS, ids=task_id)
@pytest.mark.parametrize("system", ["conformer_chunk", "rwkv_bat"])
def test_streaming_decodes_of_run_sh_run(recipe_task, system, tmp_path):
    """Each streaming decode that run.sh lists runs on ESPnet's streaming path, with the recipe's model."""
    recipe, task = recipe_task
    config = train_config(recipe, task, system)
    args = parse_train_config(config, tmp_path, stated_budget(config.resolve())[0])
    ASRTransducerTask.build_model(args)  # as training does: the token list goes into the args
    with open(tmp_path / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f)
    speech = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    for name in run_sh_decodes(recipe, task)[system]:
        settings = yaml.safe_load((recipe / "conf" / f"decode_{name}.yaml").read_text())
        settings.pop("display_hypotheses", None)  # asr_transducer_inference's logging, not a Speech2Text setting
        if not settings.get("streaming"):
            continue
        torch.manual_seed(0)
        try:  # one hypothesis: the encoder's streaming path is what is tested, not the search
            speech2text = Speech2Text(asr_train_config=tmp_path / "config.yaml", **{**settings, "beam_size": 1})
        except NotImplementedError as e:
            pytest.skip(f"{system}: {e}")
        hyps = stream(speech2text, speech)
        assert hyps, f"{name}: the final window gave no hypothesis"
        token_list = speech2text.asr_model.token_list
        blank = token_list.index("<blank>")
        for hyp in hyps:  # label sequences that start at blank, with a finite log probability
            assert hyp.yseq[0] == blank and np.isfinite(hyp.score), (name, hyp)
        for (_, tokens, token_int, _), hyp in zip(speech2text.hypotheses_to_results(hyps), hyps):
            assert token_int == [t for t in hyp.yseq if t != blank], name
            assert tokens == [token_list[t] for t in token_int], name


# --- run.sh over a stand-in asr.sh: which stages run, for which system and decode ---

FAKE_ASR_SH = r"""#!/usr/bin/env bash
# Stands in for ESPnet's asr.sh: logs the call, checks its configs, leaves what stages 1-5 (a test set of
# one utterance), 11 (a trained model), 13 (scores) and 14 (the zip) leave.
set -euo pipefail
declare -A opt=([asr_tag]= [inference_tag]= [asr_args]= [nj]= [inference_nj]=)
while [ $# -gt 0 ]; do opt[${1#--}]=$2; shift 2; done
echo "${opt[stage]}-${opt[stop_stage]} ${opt[asr_config]} ${opt[asr_tag]} ${opt[inference_tag]} nj=${opt[nj]}" \
    "inference_nj=${opt[inference_nj]} ${opt[asr_args]}" >> asr_calls.log
for key in asr_config inference_config; do
    [ -z "${opt[$key]:-}" ] || [ -f "${opt[$key]}" ] || { echo "no ${opt[$key]}" >&2; exit 1; }
done
exp=exp/asr_${opt[asr_tag]}
if [ "${opt[stage]}" -le 1 ]; then
    mkdir -p dump/raw/test
    python3 -c 'import numpy as np, soundfile as sf; sf.write("dump/raw/test/utt1.wav", np.full(24000, 0.1), 16000)'
    echo "utt1 dump/raw/test/utt1.wav" > dump/raw/test/wav.scp
    echo "utt1 ONE TWO" > dump/raw/test/text
fi
if [ "${opt[stage]}" -le 11 ] && [ "${opt[stop_stage]}" -ge 11 ] && [ -n "${TRAINED_EXP}" ]; then
    mkdir -p "${exp}" && cp "${TRAINED_EXP}"/{config.yaml,valid.loss.ave.pth} "${exp}"
fi
if [ "${opt[stage]}" -le 13 ] && [ "${opt[stop_stage]}" -ge 13 ] && [ -n "${opt[inference_tag]}" ]; then
    # Err: 10 + the window in tens of ms (full: 1), so the plot's numbers say where they came from.
    window=${opt[inference_tag]##*_}; window=${window%ms}; [ "${window}" = full ] && window=10
    for dset in ${opt[test_sets]}; do for metric in wer cer; do
        mkdir -p "${exp}/${opt[inference_tag]}/${dset}/score_${metric}"
        echo "| Sum/Avg | 10 100 | 90.0 8.0 2.0 1.0 $((10 + window / 10)).0 40.0 |" \
            > "${exp}/${opt[inference_tag]}/${dset}/score_${metric}/result.txt"
    done; done
fi
if [ "${opt[stage]}" -le 14 ] && [ "${opt[stop_stage]}" -ge 14 ]; then
    mkdir -p "${exp}" && cp "${PACKED_MODEL}" "${exp}/asr_${opt[asr_tag]}_valid.loss.ave.zip"
fi
if [ "${opt[stop_stage]}" -ge 15 ]; then  # the uploads take the zip: it must have its card by then
    python3 -c 'import sys, zipfile; sys.exit("README.md" not in zipfile.ZipFile(sys.argv[1]).namelist())' \
        "${exp}/asr_${opt[asr_tag]}_valid.loss.ave.zip"
fi
"""


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory):
    """A deployable model, as training leaves it (its exp dir) and packed; every system of the runs here."""
    root = tmp_path_factory.mktemp("packed")
    return pack(root, make_exp(root, "tiny_rwkv_bat_deployable.yaml"))


def recipe_copy(tmp_path: Path, recipe: Path) -> Path:
    """egs2/<recipe>/asr1 beside egs2/TEMPLATE/asr1, with the stand-in asr.sh and show_asr_result.sh,
    and a path.sh for this Python."""
    shutil.copytree(TEMPLATE, tmp_path / "TEMPLATE" / "asr1")
    work = tmp_path / recipe.parent.name / "asr1"
    shutil.copytree(recipe / "conf", work / "conf", symlinks=True)
    for name in ("run.sh", "RESULTS.md"):
        if (recipe / name).exists():
            shutil.copy(recipe / name, work / name)
    (work / "path.sh").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    (work / "asr.sh").write_text(FAKE_ASR_SH)
    (work / "scripts" / "utils").mkdir(parents=True)
    (work / "scripts" / "utils" / "show_asr_result.sh").write_text(
        '#!/usr/bin/env bash\necho "# RESULTS"; find "$1" -name result.txt | sort\n'
    )
    for script in (work / "asr.sh", work / "scripts" / "utils" / "show_asr_result.sh"):
        script.chmod(0o755)
    return work


def run_recipe(work: Path, *args, packed_model=None, check=True):
    trained = str(packed_model.parent) if packed_model else ""
    env = {**os.environ, "PACKED_MODEL": str(packed_model or ""), "TRAINED_EXP": trained, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "run.sh", *args], cwd=work, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"run.sh {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    calls = (work / "asr_calls.log").read_text().splitlines() if (work / "asr_calls.log").exists() else []
    return result, [call.split() for call in calls]


@pytest.mark.slow
def test_run_sh_runs_the_shared_stages_once_then_each_system(tmp_path, packed_model):
    work = recipe_copy(tmp_path, RECIPE)
    committed = (RECIPE / "RESULTS.md").read_bytes()
    result, calls = run_recipe(work, "--task", "digits", "--inference_nj", "3", packed_model=packed_model)
    assert calls[0][:2] == ["1-10", "conf/digits/train_rwkv_bat.yaml"]
    # On a CPU the systems run side by side: each one's calls in order, the two interleaved.
    expected_calls = 1
    for system, decodes in run_sh_decodes(RECIPE, "digits").items():
        config = f"conf/digits/train_{system}.yaml"
        expected = [["11-11", config, system]]
        expected += [["12-13", config, system, f"decode_{d}"] for d in decodes]
        if system == "rwkv_bat":
            expected.append(["13-13", config, system, "decode_sherpa_onnx_320ms"])
        expected.append(["14-14", config, system])
        own = [call[: len(e)] for call, e in zip([c for c in calls if c[2:3] == [system]], expected)]
        assert own == expected and len([c for c in calls if c[2:3] == [system]]) == len(expected), system
        expected_calls += len(expected)
    assert len(calls) == expected_calls
    assert all("inference_nj=3" in call for call in calls), (
        "asr.sh options after run.sh's own pass through to every call"
    )
    assert all(f"nj={min(len(os.sched_getaffinity(0)), 16)}" in call for call in calls), "a job a core"

    # The run's results are under exp/; the committed ones stay as they are.
    assert (work / "exp" / "RESULTS.md").read_text().startswith("# RESULTS")
    assert (work / "exp" / "wer_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert (work / "RESULTS.md").read_bytes() == committed and not (work / "wer_vs_latency.png").exists()
    assert "rwkv_bat test WER by window (ms) 320: 42.0, full: 11.0" in result.stdout
    assert "conformer_chunk test WER by window (ms) 320: 42.0, full: 11.0" in result.stdout
    # The sherpa-onnx decode of the exported model, scored by stage 13 (above) and described in the card.
    sherpa = work / "exp" / "asr_rwkv_bat" / "decode_sherpa_onnx_320ms" / "test"
    assert (sherpa / "text").read_text().startswith("utt1")
    for system in ("rwkv_bat", "conformer_chunk"):
        card = (work / "exp" / f"asr_{system}" / "hf_upload" / "README.md").read_text()
        assert f"# synth_en: asr_{system}" in card and "| espnet_rwkv |" in card
        assert ("sherpa-onnx" in card) == (system == "rwkv_bat")


def test_run_sh_runs_only_the_asked_stages_and_systems(tmp_path, packed_model):
    work = recipe_copy(tmp_path, RECIPE)
    _, calls = run_recipe(work, "--stage", "11", "--stop_stage", "11", "--systems", "conformer_chunk")
    assert [call[:3] for call in calls] == [["11-11", "conf/digits/train_conformer_chunk.yaml", "conformer_chunk"]]
    assert not (work / "exp" / "RESULTS.md").exists()

    result, calls = run_recipe(work, "--systems", "rwkv_bat nosuch", check=False)
    assert result.returncode != 0 and "no conf/digits/train_nosuch.yaml" in result.stderr
    assert len(calls) == 1, "nothing runs when a system is unknown"

    # Packing, then the card, then the upload of the zip with its card.
    (work / "asr_calls.log").unlink()
    _, calls = run_recipe(
        work, "--stage", "14", "--stop_stage", "15", "--systems", "rwkv_bat", packed_model=packed_model
    )
    assert [call[:3] for call in calls] == [
        ["14-14", "conf/digits/train_rwkv_bat.yaml", "rwkv_bat"],
        ["15-15", "conf/digits/train_rwkv_bat.yaml", "rwkv_bat"],
    ]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != RECIPE], ids=lambda r: r.parent.name)
def test_paper_recipes_run_sh_stages(recipe, tmp_path):
    work = recipe_copy(tmp_path, recipe)
    result, calls = run_recipe(work, "--stop_stage", "13")
    decodes = [call[3] for call in calls if call[0] == "12-13"]
    assert sorted(decodes) == sorted(f"decode_{d}" for names in run_sh_decodes(recipe).values() for d in names)
    metric = "CER" if recipe.parent.name == "aishell" else "WER"
    assert re.search(
        rf"conformer_chunk \S+ {metric} by window \(ms\) 160: 26.0, 320: 42.0, 640: 74.0, full: 11.0", result.stdout
    )


# --- local/data.sh ---


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
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
        env=env,
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
    return {
        p.relative_to(workdir): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and "local" not in p.parts
    }


def test_data_sh_reruns_identically_and_resumes(workdir):
    run_data_sh(workdir)
    first = snapshot(workdir)
    run_data_sh(workdir)
    assert snapshot(workdir) == first, "a second run must not change or duplicate anything"

    # An interrupted run: a wav never finished (only its partial file exists) and a table was not written.
    wav = next((workdir / "downloads" / "synth_en" / "sentences" / "train").glob("*.wav"))
    wav.rename(wav.with_suffix(".partial.wav"))
    (workdir / "data" / "train" / "text").unlink()
    run_data_sh(workdir)
    assert snapshot(workdir) == first, "the resumed run must finish the same corpus, with no partial file left"


FAKE_ESPNET_DATA_SH = r"""#!/usr/bin/env bash
# Stands in for ESPnet's egs2/<corpus>/asr1/local/data.sh: its own helper, the recipe's db.sh and path.sh.
set -euo pipefail
. ./db.sh
. ./path.sh
local/prepare.sh "${CORPUS_DIR}" "$@"
"""
FAKE_ESPNET_PREPARE = r"""#!/usr/bin/env bash
set -euo pipefail
mkdir -p "$1" data/train
touch "$1/fetched"
echo "utt1 options: ${*:2}" > data/train/text
"""


@pytest.mark.parametrize("root_from", ["ESPNET_ROOT", "asr.sh link"])
def test_espnet_data_prep_runs_espnets_data_sh_on_the_recipe(tmp_path, root_from):
    espnet = tmp_path / "espnet"
    espnet_local = espnet / "egs2" / "somecorpus" / "asr1" / "local"
    espnet_local.mkdir(parents=True)
    (espnet_local / "data.sh").write_text(FAKE_ESPNET_DATA_SH)
    (espnet_local / "prepare.sh").write_text(FAKE_ESPNET_PREPARE)
    (espnet / "egs2" / "TEMPLATE" / "asr1").mkdir(parents=True)
    (espnet / "egs2" / "TEMPLATE" / "asr1" / "asr.sh").write_text("")
    for script in espnet_local.iterdir():
        script.chmod(0o755)

    (tmp_path / "TEMPLATE" / "asr1").mkdir(parents=True)
    shutil.copy(TEMPLATE / "espnet_data_prep.sh", tmp_path / "TEMPLATE" / "asr1" / "espnet_data_prep.sh")
    recipe = tmp_path / "mycorpus" / "asr1"
    (recipe / "local").mkdir(parents=True)
    (recipe / "local" / "data.sh").write_text(
        '#!/usr/bin/env bash\nexec "$(dirname "$0")/../../../TEMPLATE/asr1/espnet_data_prep.sh" somecorpus "$@"\n'
    )
    (recipe / "local" / "data.sh").chmod(0o755)
    (recipe / "db.sh").write_text("CORPUS_DIR=${CORPUS_DIR:-downloads/somecorpus}\n")
    (recipe / "path.sh").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "ESPNET_ROOT"}
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    if root_from == "ESPNET_ROOT":
        env["ESPNET_ROOT"] = str(espnet)
    else:
        (recipe / "asr.sh").symlink_to(espnet / "egs2" / "TEMPLATE" / "asr1" / "asr.sh")

    for _ in range(2):  # a second run finds its own output and does it again, the same
        subprocess.run(["local/data.sh", "--stop_stage", "3"], cwd=recipe, env=env, check=True, capture_output=True)
        assert (recipe / "data" / "train" / "text").read_text() == "utt1 options: --stop_stage 3\n"
        assert (recipe / "downloads" / "somecorpus" / "fetched").exists(), "relative corpus paths stay in the recipe"
        assert not any((tmp_path / "tmp").iterdir()), "the view of the recipe is removed"

    env["ESPNET_ROOT"] = str(tmp_path / "elsewhere")
    missing = subprocess.run(["local/data.sh"], cwd=recipe, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "egs2/somecorpus/asr1/local/data.sh is missing" in missing.stderr


def test_recipes_share_the_template_and_link_no_sibling():
    """Shared recipe code is in egs2/TEMPLATE/asr1 only: no recipe links into another, and each
    recipe's path.sh and run.sh name the template by relative path."""
    for recipe in RECIPES:
        for path in recipe.rglob("*"):
            if path.is_symlink() and not set(path.relative_to(recipe).parts) & (RUNTIME_DIRS | {"asr.sh"}):
                assert path.resolve().is_relative_to(recipe), f"{path} links out of its recipe"
        assert "../../TEMPLATE/asr1/path.sh" in (recipe / "path.sh").read_text()
        assert ". ../../TEMPLATE/asr1/asr_systems.sh" in (recipe / "run.sh").read_text()


def test_paper_recipes_delegate_their_data_to_espnets_recipe():
    for recipe, corpus in [
        (EGS2 / "librispeech_100" / "asr1", "librispeech_100"),
        (EGS2 / "aishell" / "asr1", "aishell"),
    ]:
        data_sh = (recipe / "local" / "data.sh").read_text()
        assert re.search(rf'/TEMPLATE/asr1/espnet_data_prep\.sh" {corpus} "\$@"', data_sh)
        assert os.access(recipe / "local" / "data.sh", os.X_OK)
