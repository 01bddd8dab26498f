"""espnet_rwkv: RWKV encoder and BAT loss for ESPnet's transducer task.

Importing the package registers the plugin in ESPnet when ESPnet is installed
(``espnet_rwkv.registration``): at once if ESPnet's transducer task module is
already imported, otherwise as soon as it is (an import hook), so that the
ONNX runtime path (``espnet_rwkv.onnx.decoder``, ``stream --onnx``) imports
neither torch nor ESPnet. The operators in ``espnet_rwkv.ops`` need torch
only, so they also work where ESPnet is absent.
"""
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import sys

__version__ = "0.1.0"
SUPPORTED_ESPNET = "202611"


def _check_espnet_version() -> None:
    version = importlib.metadata.version("espnet")
    if version.split(".")[0] != SUPPORTED_ESPNET:
        raise ImportError(
            f"espnet_rwkv {__version__} supports espnet {SUPPORTED_ESPNET}, but espnet {version} "
            f"is installed; install it with: pip install 'espnet=={SUPPORTED_ESPNET}'"
        )


_TASK_MODULE = "espnet2.tasks.asr_transducer"


def _register() -> None:
    from espnet_rwkv.registration import register

    register()


class _RegisteringLoader(importlib.abc.Loader):
    """ESPnet's loader of the transducer task module, then the plugin's registration."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register()


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Registers the plugin right after ESPnet's transducer task module is imported."""

    def find_spec(self, name, path, target=None):
        if name != _TASK_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


if importlib.util.find_spec("espnet2") is not None:
    _check_espnet_version()
    if _TASK_MODULE in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
