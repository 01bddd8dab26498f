"""espnet_rwkv: RWKV encoder and BAT loss for ESPnet's transducer task."""
__version__ = "0.1.0"
