# Where ESPnet's librispeech_100 data preparation finds (or downloads) LibriSpeech: $LIBRISPEECH/LibriSpeech/.
LIBRISPEECH=${LIBRISPEECH:-downloads}
