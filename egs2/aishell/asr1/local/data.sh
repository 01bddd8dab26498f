#!/usr/bin/env bash
# Stage 1 of asr.sh: AISHELL-1 train, dev and test into data/, prepared by ESPnet's own aishell recipe
# (its local/data.sh; options go to it). Downloads into $AISHELL (db.sh) unless the corpus is there.
exec "$(dirname "$0")/../../../TEMPLATE/asr1/espnet_data_prep.sh" aishell "$@"
