#!/usr/bin/env bash
# Stage 1 of asr.sh: LibriSpeech train-clean-100, dev-{clean,other}, test-{clean,other} into data/,
# prepared by ESPnet's own librispeech_100 recipe (its local/data.sh; options go to it: run.sh passes
# --stop_stage 3, as stage 4 fetches LM text that no system here uses). Downloads into $LIBRISPEECH
# (db.sh) unless LibriSpeech is there already; wav.scp decodes with the flac program.
exec "$(dirname "$0")/../../../TEMPLATE/asr1/espnet_data_prep.sh" librispeech_100 "$@"
