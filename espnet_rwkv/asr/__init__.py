"""ESPnet-facing model pieces (these modules import ESPnet).

- ``rwkv_block``: the RWKV-4 block and its streaming inference form;
- ``encoder``: ``build_encoder`` and ``RWKVEncoder`` (whole utterances and streaming);
- ``encoder_config``: validation of an RWKV ``encoder_conf``;
- ``receptive_field``: what ESPnet's subsampling reads, for streaming;
- ``model``: the transducer model with a selectable loss; ``bat_loss``, ``cif``: BAT;
- ``features``, ``recognizer``, ``beam_history``: exact chunk-wise streaming decoding.
"""
