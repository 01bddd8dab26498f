"""The plugin inside ESPnet's transducer task: building, losses, validation, loading."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TOKENS
from espnet2.asr_transducer.encoder.encoder import Encoder
from espnet2.tasks.asr_transducer import ASRTransducerTask

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin)
from espnet_rwkv.asr.encoder import RWKVEncoder
from espnet_rwkv.asr.model import CheckpointMismatchError, TransducerModel

CONF = Path(__file__).parent / "conf"


def build(config: dict):
    parser = ASRTransducerTask.get_parser()
    args = parser.parse_args([])
    for key, value in config.items():
        setattr(args, key, value)
    args.token_list = list(TOKENS)
    return ASRTransducerTask.build_model(args)


def load_conf(name):
    return yaml.safe_load((CONF / name).read_text())


def batch():
    g = torch.Generator().manual_seed(0)
    speech = torch.randn(3, 16000, generator=g)
    lengths = torch.tensor([16000, 12000, 8000])
    text = torch.tensor([[2, 3, 4], [3, 4, -1], [2, -1, -1]])
    return speech, lengths, text, torch.tensor([3, 2, 1])


@pytest.mark.parametrize("name,encoder_cls", [("tiny_rwkv.yaml", RWKVEncoder), ("tiny_conformer_chunk.yaml", Encoder)])
def test_builds_and_trains_one_step(name, encoder_cls):
    model = build(load_conf(name))
    assert type(model) is TransducerModel and type(model.encoder) is encoder_cls
    loss, stats, weight = model(*batch())
    assert torch.isfinite(loss) and weight == 3
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert set(stats) >= {"loss", "loss_transducer", "loss_aux_ctc"}


def test_utterance_without_encoder_frames_is_an_error():
    model = build(load_conf("tiny_rwkv.yaml"))
    speech, lengths, text, text_lengths = batch()
    lengths[2] = 0
    with pytest.raises(ValueError, match=r"\['u3'\] are too short: \[1\] feature frames \(\[0\] samples\)"):
        model(speech, lengths, text, text_lengths, utt_id=["u1", "u2", "u3"])


def test_rnnt_loss_equals_torchaudio_on_full_joint():
    import torchaudio
    from espnet2.asr_transducer.utils import get_transducer_task_io

    conf = load_conf("tiny_rwkv.yaml")
    conf["model_conf"] = {"transducer_loss": "rnnt"}
    model = build(conf).eval()
    speech, lengths, text, text_lengths = batch()
    loss, stats, _ = model(speech, lengths, text, text_lengths)
    enc, enc_len = model.encode(speech, lengths)
    dec_in, target, t_len, u_len = get_transducer_task_io(text, enc_len)
    joint = model.joint_network(enc.unsqueeze(2), model.decoder(dec_in).unsqueeze(1))
    ref = torchaudio.functional.rnnt_loss(joint, target, t_len, u_len, blank=0)
    torch.testing.assert_close(stats["loss_transducer"].reshape(()), ref.detach())


def test_rwkv_encoder_padding_does_not_leak():
    """A causal body: an utterance's output is the same alone and padded in a batch."""
    model = build(load_conf("tiny_rwkv.yaml")).eval()
    feats = torch.randn(2, 200, 40)
    feats[1, 120:] = 0.0  # ESPnet pads batches with zeros
    out, out_len = model.encoder(feats, torch.tensor([200, 120]))
    alone, alone_len = model.encoder(feats[1:, :120], torch.tensor([120]))
    assert out_len[1] == alone_len[0]
    # ESPnet's subsampling convolutions look a few input frames ahead, so the
    # last two output frames see padding (after a conv + bias, not zeros);
    # the RWKV body adds no leak of its own.
    n = int(out_len[1]) - 2
    torch.testing.assert_close(out[1, :n], alone[0, :n], rtol=1e-5, atol=1e-5)


def test_rwkv_block_state_chains_like_one_pass():
    model = build(load_conf("tiny_rwkv.yaml")).eval()
    block = model.encoder.blocks[1]
    x = torch.randn(2, 30, 32)
    full, full_state = block(x)
    first, state = block(x[:, :11])
    second, state = block(x[:, 11:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, full_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "body,message",
    [
        ([{"block_type": "rwkv", "hidden_size": 32, "heads": 4}], r"unknown option\(s\) \['heads'\]"),
        ([{"block_type": "rwkv"}], "hidden_size is required"),
        ([{"block_type": "rwkv", "hidden_size": 32, "num_blocks": 0}], "num_blocks must be"),
        (
            [{"block_type": "rwkv", "hidden_size": 32}, {"block_type": "conformer", "hidden_size": 32}],
            "cannot be mixed",
        ),
        ([{"block_type": "transformerx", "hidden_size": 32}], "Block type: transformerx is not supported"),
    ],
)
def test_bad_encoder_config_names_the_problem(body, message):
    conf = load_conf("tiny_rwkv.yaml")
    conf["encoder_conf"]["body_conf"] = body
    with pytest.raises(ValueError, match=message):
        build(conf)


@pytest.mark.parametrize(
    "model_conf,message",
    [
        ({"transducer_loss": "ctc"}, "transducer_loss must be one of"),
        ({"transducer_loss": "rnnt", "bat_conf": {"left": 2}}, "bat_conf is only used"),
        ({"transducer_loss": "rnnt", "fastemit_lambda": 0.01}, "fastemit_lambda"),
    ],
)
def test_bad_model_config_names_the_problem(model_conf, message):
    conf = load_conf("tiny_rwkv.yaml")
    conf["model_conf"] = model_conf
    with pytest.raises(ValueError, match=message):
        build(conf)


def test_config_defaults_keep_espnet_model_options():
    parser = ASRTransducerTask.get_parser()
    defaults = parser.get_default("model_conf")
    assert defaults["transducer_loss"] == "rnnt"
    assert defaults["auxiliary_ctc_weight"] == 0.0  # one of ESPnet's own


def _save_experiment(tmp_path, conf, model):
    config = {
        **conf,
        "token_list": list(TOKENS),
        "input_size": None,
        "frontend": "default",
        "specaug": None,
        "normalize": None,
        "init": None,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(model.state_dict(), tmp_path / "model.pth")
    return tmp_path / "config.yaml", tmp_path / "model.pth"


def test_loading_matching_checkpoint_gives_same_weights(tmp_path):
    conf = load_conf("tiny_rwkv.yaml")
    model = build(conf)
    config, ckpt = _save_experiment(tmp_path, conf, model)
    loaded, _ = ASRTransducerTask.build_model_from_file(config, ckpt)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_loading_mismatched_checkpoint_is_an_error(tmp_path):
    conf = load_conf("tiny_rwkv.yaml")
    config, ckpt = _save_experiment(tmp_path, conf, build(conf))
    conf["encoder_conf"]["body_conf"][0]["num_blocks"] = 3  # config edited after training
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "encoder_conf": conf["encoder_conf"]}))
    with pytest.raises(CheckpointMismatchError, match=r"1\d* missing key"):
        ASRTransducerTask.build_model_from_file(config, ckpt)


def test_unsupported_espnet_version_is_refused(monkeypatch):
    from espnet_rwkv import registration

    monkeypatch.setattr(registration.importlib.metadata, "version", lambda name: "202412")
    with pytest.raises(ImportError, match="supports espnet 202611, but espnet 202412"):
        espnet_rwkv.register()


def _imported_after(code: str) -> list:
    """Modules that ``code``, run in a fresh interpreter, leaves imported (the espnet2 ones, and what the
    transducer task's names are bound to)."""
    probe = (
        f"{code}\nimport sys\n"
        "print(sorted(m for m in sys.modules if m == 'espnet2' or m.startswith('espnet2.')))\n"
        "task = sys.modules.get('espnet2.tasks.asr_transducer')\n"
        "print(task.Encoder.__module__ if task else None)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-2:]


def test_importing_the_ops_touches_no_espnet():
    espnet_modules, _ = _imported_after("import espnet_rwkv.ops")
    assert espnet_modules == "[]"


def test_importing_the_package_registers_nothing():
    espnet_modules, _ = _imported_after("import espnet_rwkv")
    assert espnet_modules == "[]"
    _, encoder = _imported_after("import espnet_rwkv, espnet2.tasks.asr_transducer")
    assert encoder == "espnet2.asr_transducer.encoder.encoder"


def test_import_espnet_rwkv_espnet_registers():
    _, encoder = _imported_after("import espnet_rwkv.espnet")
    assert encoder == "espnet_rwkv.asr.encoder"


def test_registration_silences_only_the_flash_attn_notice():
    code = "import sys; print('own line', file=sys.stderr); import espnet2.tasks.asr_transducer"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Failed to import Flash Attention" in plain.stderr, "ESPnet no longer prints it: drop the filter"
    out = subprocess.run(
        [sys.executable, "-m", "espnet_rwkv.launch", "-c", code], capture_output=True, text=True, check=True
    )
    assert "Flash Attention" not in out.stderr and "own line" in out.stderr


def test_launcher_registers_in_spawned_workers():
    """ESPnet's multi-GPU training spawns workers; they must see the plugin too."""
    code = (
        "import multiprocessing as mp, spawn_probe\n"
        "ctx = mp.get_context('spawn')\n"
        "q = ctx.Queue()\n"
        "p = ctx.Process(target=spawn_probe.report_encoder, args=(q,))\n"
        "p.start(); print(q.get()); p.join()\n"
    )
    script_dir = Path(__file__).parent
    out = subprocess.run(
        [sys.executable, "-m", "espnet_rwkv.launch", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=script_dir,
    )
    assert out.stdout.strip().splitlines()[-1] == "espnet_rwkv.asr.encoder"


def test_launcher_destroys_the_process_group_the_target_leaves(tmp_path):
    # Left to interpreter teardown, gloo's threads can abort a finished torchrun worker.
    code = (
        "import atexit, torch.distributed as dist\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path}/rendezvous', rank=0, world_size=1)\n"
        "atexit.register(lambda: print('open at exit:', dist.is_initialized()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "espnet_rwkv.launch", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "open at exit: False"


def test_launcher_flushes_denormals_in_the_target_and_its_threads():
    # Training from scratch on a CPU underflows Adam's moments; denormal arithmetic is ~100x slower.
    code = (
        "import threading, torch\n"
        "tiny = torch.tensor([1e-30]) * 1e-9\n"
        "print((tiny * 1).item() == 0)\n"
        "t = threading.Thread(target=lambda: print((tiny * 1).item() == 0)); t.start(); t.join()\n"
    )
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert plain.stdout.split() == ["False", "False"], "this CPU keeps denormals by default"
    out = subprocess.run(
        [sys.executable, "-m", "espnet_rwkv.launch", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True"]


def test_launcher_usage_errors():
    out = subprocess.run(
        [sys.executable, "-m", "espnet_rwkv.launch", "-m", "no.such.module"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "no module named 'no.such.module'" in out.stderr


def test_transducer_io_equals_espnet_without_host_reads():
    from espnet2.asr_transducer.utils import get_transducer_task_io

    from espnet_rwkv.asr.model import transducer_io

    text = torch.tensor([[4, 2, 7], [3, -1, -1], [-1, -1, -1]])
    text_lengths, enc_len = torch.tensor([3, 1, 0]), torch.tensor([9, 5, 4])
    for ours, espnet in zip(transducer_io(text, text_lengths, enc_len), get_transducer_task_io(text, enc_len)):
        assert ours.dtype == espnet.dtype and torch.equal(ours, espnet)
    on_meta = transducer_io(*(x.to("meta") for x in (text, text_lengths, enc_len)))
    assert [x.shape for x in on_meta] == [(3, 4), (3, 3), (3,), (3,)]
