"""espnet_rwkv: RWKV encoder and BAT loss for ESPnet's transducer task.

Importing the package changes nothing in ESPnet, and ``espnet_rwkv.ops`` needs torch
only, so the operators also work where ESPnet is absent. The plugin enters ESPnet
through one call, ``register()`` (docs/espnet.md), which ``import espnet_rwkv.espnet``
and the launcher (``python -m espnet_rwkv.launch``) make.
"""

__version__ = "0.1.0"
SUPPORTED_ESPNET = "202611"


def register() -> None:
    """Register the plugin in ESPnet (idempotent): check ESPnet's version, then rebind its
    transducer task's builders (``espnet_rwkv.registration``).

    Raises:
        ImportError: if ESPnet is missing or is not release ``SUPPORTED_ESPNET``.
    """
    from espnet_rwkv import registration

    registration.register()
