"""Model card for a packed model, and the folder that a Hugging Face upload takes.

asr.sh's stage 14 packs ``exp/asr_<tag>`` into a zip with ``espnet2.bin.pack``.
Every model trained through this plugin needs it again to be rebuilt (an RWKV
encoder, or the ``transducer_loss`` option of any encoder), which nothing in
ESPnet's zip says. After packing, this module

- adds ``espnet_rwkv`` (its version) and ``requirements`` to the zip's
  ``meta.yaml``, next to the ``espnet`` and ``torch`` versions that ESPnet
  records there (keys that ESPnet's unpacking ignores);
- adds a ``README.md`` model card to the zip: Hugging Face metadata, what the
  model needs, with versions and the pip line that installs them, how to load it
  (``import espnet_rwkv.espnet`` first), the model, its results (ESPnet's
  RESULTS.md, cleaned up; a warning first when its WER says it is not usable)
  and its training config;
- unpacks the zip into ``<asr_exp>/hf_upload``: the folder that asr.sh's
  Hugging Face stage would push (the zip's files, the card as its README.md),
  made without a network, ready for ``huggingface-cli upload`` later.

    python -m espnet_rwkv.model_card --asr_exp exp/asr_rwkv_bat \\
        --packed_model exp/asr_rwkv_bat/asr_rwkv_bat_valid.loss.ave.zip --lang en --corpus synth_en

Running it again on the same zip replaces what it added before.
"""

import argparse
import importlib.metadata
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import torch
import yaml
from espnet2.tasks.asr_transducer import ASRTransducerTask

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin: the card counts the model's parameters)

CARD_NAME = "README.md"
# Best WER (%) from which the card warns that the model is not usable: at least every other word wrong.
UNUSABLE_WER = 50.0


def requirements(meta: Dict) -> Dict[str, str]:
    """Versions the model needs: the plugin's, and those ESPnet's pack recorded (else the installed ones)."""
    return {
        "espnet_rwkv": espnet_rwkv.__version__,
        "espnet": str(meta.get("espnet") or importlib.metadata.version("espnet")),
        "torch": str(meta.get("torch") or torch.__version__),
        "torchaudio": importlib.metadata.version("torchaudio"),
        "python": str(meta.get("python") or sys.version).split()[0],
    }


def pip_pins(needs: Dict[str, str]) -> Dict[str, str]:
    """Package -> ``package==version`` of the packages to install, with public versions.

    pip installs torch 2.11.0 whatever local build (+cu130, +cpu) trained the model.
    """
    return {
        package: f"{package}=={needs[package].split('+')[0]}"
        for package in ("espnet_rwkv", "espnet", "torch", "torchaudio")
    }


def repository_url() -> str:
    """Where espnet_rwkv is installed from (it is not on PyPI): setup.py's ``url``, from the package metadata."""
    url = importlib.metadata.metadata("espnet_rwkv")["Home-page"]
    if not url:
        raise RuntimeError(
            "espnet_rwkv's package metadata has no Home-page (installed from an older setup.py): "
            "reinstall it (pip install -e <your checkout>)"
        )
    return url


def needs_plugin(config: Dict) -> bool:
    """Whether ESPnet alone would refuse the config: an RWKV block, or a plugin option of the model."""
    blocks = config.get("encoder_conf", {}).get("body_conf", [])
    return any(b.get("block_type") == "rwkv" for b in blocks) or bool(
        {"transducer_loss", "bat_conf"} & set(config.get("model_conf", {}))
    )


def describe_model(config: Dict, num_params: int) -> List[str]:
    """Markdown bullet lines: encoder blocks, prediction and joint networks, loss, tokens, size."""
    encoder = config.get("encoder_conf", {})
    blocks = [
        f"{b.get('num_blocks', 1)} × {b['block_type']} ({b.get('hidden_size')})" for b in encoder.get("body_conf", [])
    ]
    subsampling = encoder.get("input_conf", {}).get("subsampling_factor", 4)
    model_conf = config.get("model_conf", {})
    loss = model_conf.get("transducer_loss", "rnnt")
    if loss == "bat":
        loss += f" {model_conf.get('bat_conf', {})}"
    decoder_size = config.get("decoder_conf", {}).get("hidden_size", "?")
    joint_size = config.get("joint_network_conf", {}).get("joint_space_size", "?")
    tokens = config.get("token_list", [])
    return [
        f"- encoder: {', '.join(blocks) or 'see the config'}, subsampling ×{subsampling}",
        f"- prediction network: {config.get('decoder', 'rnn')} ({decoder_size}); joint space {joint_size}",
        f"- transducer loss: {loss}; auxiliary CTC weight {model_conf.get('auxiliary_ctc_weight', 0.0)}",
        f"- tokens: {config.get('token_type', '?')}, {len(tokens)} in the token list",
        f"- parameters: {num_params / 1e6:.2f} M",
    ]


def heading_level(line: str) -> int:
    """1 to 6 for a markdown ATX heading (``## Title``), else 0."""
    match = re.match(r"(#{1,6}) ", line)
    return len(match.group(1)) if match else 0


def table_rows(lines: List[str]) -> List[List[str]]:
    """The cells of a markdown table's lines (header, ``|---|`` separator, data rows), in order."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def split_tables(lines: List[str]) -> List[List[str]]:
    """Lines grouped into blocks: each run of table lines (starting with ``|``) one block, any other line alone."""
    blocks: List[List[str]] = []
    for line in lines:
        if line.startswith("|") and blocks and blocks[-1][0].startswith("|"):
            blocks[-1].append(line)
        else:
            blocks.append([line])
    return blocks


def best_wer(results: str) -> Optional[float]:
    """The lowest ``Err`` of the tables under a ``WER`` heading of ESPnet's RESULTS.md; None if none."""
    errors = []
    heading = ""
    for block in split_tables(results.splitlines()):
        if heading_level(block[0]):
            heading = block[0].lstrip("#").strip()
        elif block[0].startswith("|") and heading.upper() == "WER":
            header, *rows = table_rows(block)
            if "Err" in header:
                column = header.index("Err")
                errors += [float(row[column]) for row in rows[1:] if re.fullmatch(r"\d+(\.\d+)?", row[column])]
    return min(errors, default=None)


def results_section(results: str, level: int) -> List[str]:
    """ESPnet's RESULTS.md (show_asr_result.sh) as lines under a heading of ``level``.

    Its headings (its own ``# RESULTS`` first) move below ``level``, so that the card keeps one
    H1; the tables it prints with no rows (CER, TER when only WER was scored) go, and so do the
    headings left with nothing under them.
    """
    lines = [line for block in split_tables(results.strip().splitlines()) if len(block) != 2 for line in block]
    levels = [heading_level(line) for line in lines]
    demote = level + 1 - min(filter(None, levels), default=level + 1)
    kept = []
    for i, line in enumerate(lines):
        if levels[i]:
            end = next((j for j in range(i + 1, len(lines)) if 0 < levels[j] <= levels[i]), len(lines))
            if not any(lines[j].strip() and not levels[j] for j in range(i + 1, end)):
                continue
            if kept and kept[-1].strip():
                kept.append("")
            kept.append("#" * demote + line)
        elif line.strip() or (kept and kept[-1].strip()):  # one blank line between blocks
            kept.append(line)
    return kept


def card(name: str, corpus: str, lang: str, config: Dict, meta: Dict, num_params: int, results: str) -> str:
    """The README.md model card (Hugging Face front matter, then markdown)."""
    needs = requirements(meta)
    wer = best_wer(results)
    lines = [
        # ESPnet's own cards' fields (tags, language, datasets, license: asr.sh's TEMPLATE_HF_Readme.md),
        # with the library and the pipeline that Hugging Face lists the model under.
        "---",
        "library_name: espnet",
        "pipeline_tag: automatic-speech-recognition",
        "tags:",
        *(f"- {tag}" for tag in ("espnet", "espnet_rwkv", "audio", "automatic-speech-recognition", "transducer")),
        f"language: {lang}",
        "datasets:",
        f"- {corpus}",
        "license: cc-by-4.0",
        "---",
        "",
        f"# {corpus}: {name}",
        "",
        *(
            [
                f"Not for transcription: its best WER is {wer:.1f} %, so this model did not learn the task "
                "(e.g. a short training run that checks the pipeline).",
                "",
            ]
            if wer is not None and wer >= UNUSABLE_WER
            else []
        ),
        "An ESPnet transducer (`asr_transducer` task) trained with the **espnet_rwkv** plugin "
        f"({espnet_rwkv.__version__}). "
        + (
            "**Loading it needs espnet_rwkv:** without the plugin ESPnet cannot rebuild the model and refuses it."
            if needs_plugin(config)
            else "Its config uses ESPnet's own options only, so ESPnet alone can load it too."
        ),
        "",
        "| package | version |",
        "|---|---|",
        *(f"| {package} | {version} |" for package, version in needs.items()),
        "",
        "## Install",
        "",
        "espnet_rwkv is not on PyPI; pip installs it from its repository, with the versions above:",
        "",
        "```bash",
        f'pip install "espnet_rwkv @ git+{repository_url()}" '
        + " ".join(pin for package, pin in pip_pins(needs).items() if package != "espnet_rwkv"),
        "```",
        "",
        "## Model",
        "",
        *describe_model(config, num_params),
        "",
        "## Use",
        "",
        "```python",
        "import espnet_rwkv.espnet  # first: registers the RWKV encoder and the transducer losses in ESPnet",
        "from espnet2.bin.asr_transducer_inference import Speech2Text",
        "",
        'speech2text = Speech2Text.from_pretrained(model_tag="<this repository, or the packed .zip>")',
        "hypotheses = speech2text(speech)  # speech: 16 kHz mono samples",
        "text = speech2text.hypotheses_to_results(hypotheses)[0][0]",
        "```",
        "",
        "ESPnet's command-line tools load it through the plugin's launcher, e.g. "
        "`python -m espnet_rwkv.launch -m espnet2.bin.asr_transducer_inference ...`; "
        'in a recipe, `asr.sh --asr_task asr_transducer --python "python3 -m espnet_rwkv.launch"`.',
        "",
        "## Results",
        "",
        *(results_section(results, level=2) or ["(no RESULTS.md in the experiment)"]),
        "",
        "## Training config",
        "",
        "<details><summary>config.yaml</summary>",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def count_parameters(config: Dict) -> int:
    """Parameters of the model that the config builds (buffers, such as feature statistics, not counted)."""
    # Normalization holds buffers only; leaving it out needs no statistics file.
    args = argparse.Namespace(**{**config, "normalize": None})
    return sum(p.numel() for p in ASRTransducerTask.build_model(args).parameters())


def rewrite_zip(path: Path, replace: Dict[str, bytes]) -> None:
    """Write ``path`` again with the members in ``replace`` added or replaced; atomic."""
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            if info.filename not in replace:
                new.writestr(info, old.read(info))
        for name, data in replace.items():
            new.writestr(name, data)
    os.replace(partial, path)


def add_card(asr_exp: Path, packed_model: Path, lang: str, corpus: str) -> str:
    """Extend the zip's meta.yaml and add the card to the zip; return the card."""
    with zipfile.ZipFile(packed_model) as archive:
        meta = yaml.safe_load(archive.read("meta.yaml"))
        config = yaml.safe_load(archive.read(meta["yaml_files"]["asr_train_config"]))
    num_params = count_parameters(config)
    results_file = asr_exp / "RESULTS.md"
    results = results_file.read_text(encoding="utf-8") if results_file.exists() else ""
    needs = requirements(meta)
    meta["espnet_rwkv"] = needs["espnet_rwkv"]
    meta["requirements"] = list(pip_pins(needs).values())
    text = card(asr_exp.name, corpus, lang, config, meta, num_params, results)
    rewrite_zip(packed_model, {"meta.yaml": yaml.safe_dump(meta).encode(), CARD_NAME: text.encode()})
    return text


def write_hf_folder(packed_model: Path, folder: Path) -> None:
    """Unpack the zip (card included) into ``folder``, replacing what was there."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(packed_model) as archive:
        archive.extractall(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def sherpa_onnx_section(files: List[str], chunk_ms: int) -> str:
    """Model card section: the ONNX export (in ``onnx/``) and how sherpa-onnx or espnet_rwkv decode it."""
    listed = ", ".join(f"`onnx/{name}`" for name in files)
    return f"""
## Streaming with sherpa-onnx (no torch, no ESPnet)

{listed}: the model exported by `python -m espnet_rwkv.export_onnx --chunk_ms {chunk_ms}`
(sherpa-onnx's `lstm` online transducer layout; it computes its own kaldi fbank features).

```python
import sherpa_onnx, soundfile, numpy as np
recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
    tokens="onnx/tokens.txt", encoder="onnx/encoder.onnx", decoder="onnx/decoder.onnx",
    joiner="onnx/joiner.onnx", model_type="lstm", num_threads=1, decoding_method="greedy_search")
audio, rate = soundfile.read("audio.wav", dtype="float32")  # 16 kHz mono
stream = recognizer.create_stream()
stream.accept_waveform(rate, audio)
stream.accept_waveform(rate, np.zeros(int(0.7 * rate), np.float32))  # tail padding
stream.input_finished()
while recognizer.is_ready(stream):
    recognizer.decode_stream(stream)
print(recognizer.get_result(stream))
```

Or with onnxruntime only: `pip install "espnet_rwkv[onnx] @ git+{repository_url()}"`, then
`python -m espnet_rwkv.stream --onnx onnx audio.wav`.
"""


def add_onnx(folder: Path, onnx_dir: Path) -> None:
    """Copy an export (``*.onnx``, tokens.txt) into ``folder/onnx`` and add the sherpa-onnx section to its card."""
    files = sorted(p.name for p in onnx_dir.iterdir() if p.suffix == ".onnx" or p.name == "tokens.txt")
    missing = {"encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"} - set(files)
    if missing:
        raise FileNotFoundError(f"{onnx_dir}: no {sorted(missing)} (python -m espnet_rwkv.export_onnx writes them)")
    target = folder / "onnx"
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copyfile(onnx_dir / name, target / name)
    import onnx  # only here: the card itself needs no ONNX packages

    meta = {p.key: p.value for p in onnx.load(str(onnx_dir / "encoder.onnx"), load_external_data=False).metadata_props}
    card_path = folder / CARD_NAME
    text = card_path.read_text(encoding="utf-8") if card_path.exists() else ""
    card_path.write_text(
        text + sherpa_onnx_section(files, int(meta.get("decode_chunk_len", 32)) * 10), encoding="utf-8"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asr_exp", type=Path, required=True, help="the experiment, e.g. exp/asr_rwkv_bat")
    parser.add_argument("--packed_model", type=Path, required=True, help="the zip that asr.sh stage 14 wrote")
    parser.add_argument("--lang", default="noinfo")
    parser.add_argument("--corpus", default=Path.cwd().parent.name, help="default: the recipe's name")
    parser.add_argument("--hf_folder", type=Path, help="default: <asr_exp>/hf_upload")
    parser.add_argument("--onnx_dir", type=Path, help="an espnet_rwkv.export_onnx dir to add to the upload folder")
    args = parser.parse_args(argv)
    add_card(args.asr_exp, args.packed_model, args.lang, args.corpus)
    folder = args.hf_folder or args.asr_exp / "hf_upload"
    write_hf_folder(args.packed_model, folder)
    if args.onnx_dir:
        add_onnx(folder, args.onnx_dir)
    print(f"model_card: {args.packed_model} has {CARD_NAME} and espnet_rwkv in meta.yaml; {folder} is ready to upload")


if __name__ == "__main__":
    main()
