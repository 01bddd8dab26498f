"""``import espnet_rwkv.espnet``: the one-line way to use the plugin from Python.

Importing this module registers espnet_rwkv in ESPnet (``espnet_rwkv.register()``), so
that ESPnet's transducer task builds RWKV encoders and the plugin's model, e.g.::

    import espnet_rwkv.espnet  # noqa: F401  (registers the plugin in ESPnet)
    from espnet2.bin.asr_transducer_inference import Speech2Text
"""

from espnet_rwkv import register

register()
