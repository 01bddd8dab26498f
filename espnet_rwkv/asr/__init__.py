"""ESPnet-facing model pieces: RWKV encoder, BAT loss, transducer model."""
