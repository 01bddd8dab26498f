"""espnet_rwkv: RWKV encoder and BAT loss for ESPnet's transducer task.

Importing the package registers the plugin in ESPnet when ESPnet is installed
(``espnet_rwkv.registration``). The operators in ``espnet_rwkv.ops`` need
torch only, so they also work where ESPnet is absent.
"""
import importlib.metadata
import importlib.util

__version__ = "0.1.0"
SUPPORTED_ESPNET = "202611"


def _check_espnet_version() -> None:
    version = importlib.metadata.version("espnet")
    if version.split(".")[0] != SUPPORTED_ESPNET:
        raise ImportError(
            f"espnet_rwkv {__version__} supports espnet {SUPPORTED_ESPNET}, but espnet {version} "
            f"is installed; install it with: pip install 'espnet=={SUPPORTED_ESPNET}'"
        )


if importlib.util.find_spec("espnet2") is not None:
    _check_espnet_version()
    from espnet_rwkv.registration import register

    register()
