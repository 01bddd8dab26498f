"""Export an RWKV transducer for sherpa-onnx (and ``espnet_rwkv.stream --onnx``).

    python -m espnet_rwkv.export_onnx --model exp/asr_rwkv_bat --output_dir exp/asr_rwkv_bat/onnx_320ms
    python -m espnet_rwkv.export_onnx --model packed_model.zip --output_dir onnx --chunk_ms 160 --int8

Writes encoder.onnx, decoder.onnx, joiner.onnx and tokens.txt (with --int8
also *.int8.onnx, weights quantized dynamically): sherpa-onnx's ``lstm``
online transducer layout (``espnet_rwkv.onnx.export``). The model must have
been trained for it: ``frontend: kaldi_fbank``, ``decoder: stateless``,
``normalize: global_mvn`` (or none), ``encoder_conf.input_conf.vgg_like:
false``; any other config is refused with the key to change. Decode with

    sherpa_onnx.OnlineRecognizer.from_transducer(tokens=..., encoder=..., decoder=..., joiner=...,
                                                 model_type="lstm", num_threads=1)
"""

import argparse
import sys

import espnet_rwkv.espnet  # noqa: F401  (first: registers the plugin before ESPnet's modules load)
from espnet_rwkv.onnx.export import NotExportableError, export_model, load_model


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m espnet_rwkv.export_onnx",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="packed model (.zip) or exp dir with config.yaml")
    parser.add_argument(
        "--model_file", help="checkpoint in an exp dir (default valid.loss.ave.pth, then valid.loss.best.pth)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--chunk_ms", type=int, default=320, help="decoding chunk, ms (a multiple of 10 ms x the subsampling factor)"
    )
    parser.add_argument("--int8", action="store_true", help="also write *.int8.onnx (dynamic int8 weights)")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        model, tokens = load_model(args.model, args.model_file)
        paths = export_model(model, tokens, args.output_dir, chunk_ms=args.chunk_ms, int8=args.int8)
    except NotExportableError as e:
        print(f"espnet_rwkv.export_onnx: error: {args.model} cannot be exported for sherpa-onnx: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"espnet_rwkv.export_onnx: error: {e}", file=sys.stderr)
        return 1
    for _, path in sorted(paths.items()):
        print(f"{path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
