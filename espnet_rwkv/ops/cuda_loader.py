"""The compiled CUDA extensions of the ops, and the one-warning fallback when they cannot be built."""
import warnings

_usable = {}


def extension(name: str):
    """The compiled module of ``cuda_ext/<name>.cu`` (built JIT on first use); raises if it cannot be."""
    try:
        from espnet_rwkv.cuda_ext import load
    except ImportError:  # source tree without ``pip install``
        from cuda_ext import load
    return load(name)


def usable(name: str) -> bool:
    """Whether extension ``name`` loads; on the first failure warn once and remember."""
    if name not in _usable:
        try:
            extension(name)
            _usable[name] = True
        except Exception as err:  # a failed build raises many kinds of errors
            warnings.warn(
                f"{name}: the CUDA extension could not be built or loaded ({err!r}); "
                "running the PyTorch implementation instead (slower).",
                RuntimeWarning,
                stacklevel=3,
            )
            _usable[name] = False
    return _usable[name]
