"""ONNX export of RWKV transducers for sherpa-onnx, and a pure onnxruntime streaming decoder.

- ``export``: encoder / decoder / joiner graphs in the file layout and
  metadata of sherpa-onnx's ``lstm`` online transducer (needs torch and ESPnet);
- ``decoder``: streaming greedy / modified beam search over those files with
  numpy, onnxruntime and kaldi-native-fbank only;
- ``decode_dir``: decode an ESPnet data dir with sherpa-onnx (or ``decoder``),
  writing ``text`` and the real-time factor, for a recipe's scoring.
"""
