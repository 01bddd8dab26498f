"""Validation of the ``encoder_conf`` of an RWKV body, in the manner of ESPnet's
``espnet2/asr_transducer/encoder/validation.py``: clear errors for what an RWKV
encoder does not take, and ESPnet's ConvInput configuration for what it does.
"""

from typing import Any, Dict, List, Tuple

BLOCK_OPTIONS = {"block_type", "hidden_size", "linear_size", "num_blocks", "dropout_rate", "compile"}
INPUT_OPTIONS = {"vgg_like", "subsampling_factor", "conv_size"}


def check_body(body_conf: List[Dict[str, Any]]) -> Tuple[int, int, float, bool, int]:
    """Validate rwkv body blocks -> (hidden_size, linear_size, dropout_rate, compile, total blocks).

    ``compile: true`` runs each block through ``torch.compile(fullgraph=True)`` in training.
    """
    sizes = set()
    total = 0
    for i, block in enumerate(body_conf, start=1):
        unknown = set(block) - BLOCK_OPTIONS
        if unknown:
            raise ValueError(
                f"encoder_conf.body_conf block {i} (rwkv): unknown option(s) {sorted(unknown)}; "
                f"allowed: {sorted(BLOCK_OPTIONS)}"
            )
        if "hidden_size" not in block:
            raise ValueError(f"encoder_conf.body_conf block {i} (rwkv): hidden_size is required")
        hidden = block["hidden_size"]
        linear, dropout = block.get("linear_size", 4 * hidden), block.get("dropout_rate", 0.0)
        for key, value in (("hidden_size", hidden), ("linear_size", linear)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"encoder_conf.body_conf block {i} (rwkv): {key} must be an int >= 1, got {value!r}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(
                f"encoder_conf.body_conf block {i} (rwkv): dropout_rate must be in [0, 1), got {dropout!r}"
            )
        compile_block = block.get("compile", False)
        if not isinstance(compile_block, bool):
            raise ValueError(
                f"encoder_conf.body_conf block {i} (rwkv): compile must be true or false, got {compile_block!r}"
            )
        sizes.add((hidden, linear, dropout, compile_block))
        num = block.get("num_blocks", 1)
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"encoder_conf.body_conf block {i} (rwkv): num_blocks must be a positive int, got {num!r}")
        total += num
    if len(sizes) != 1:
        raise ValueError(
            "encoder_conf.body_conf: all rwkv blocks must share hidden_size, linear_size, "
            f"dropout_rate and compile, got {sorted(sizes)}"
        )
    hidden, linear, dropout, compile_blocks = sizes.pop()
    return hidden, linear, dropout, compile_blocks, total


def input_block_conf(input_conf: Dict[str, Any], hidden_size: int) -> Dict[str, Any]:
    """ESPnet's ConvInput configuration for an input block feeding ``hidden_size``."""
    unknown = set(input_conf) - INPUT_OPTIONS
    if unknown:
        raise ValueError(
            f"encoder_conf.input_conf: unknown option(s) {sorted(unknown)}; allowed: {sorted(INPUT_OPTIONS)}"
        )
    vgg_like = input_conf.get("vgg_like", False)
    factor = input_conf.get("subsampling_factor", 4)
    allowed = (4, 6) if vgg_like else (2, 4, 6)
    if factor not in allowed:
        raise ValueError(f"encoder_conf.input_conf: subsampling_factor must be one of {allowed}, got {factor}")
    conv_size = input_conf.get("conv_size", (64, 128) if vgg_like else hidden_size)
    if vgg_like and isinstance(conv_size, int):
        conv_size = (conv_size, conv_size)
    return {"vgg_like": vgg_like, "subsampling_factor": factor, "conv_size": conv_size, "output_size": hidden_size}
