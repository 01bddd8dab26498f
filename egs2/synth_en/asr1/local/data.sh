#!/usr/bin/env bash
# Stage 1 of asr.sh: synthesize the corpus into data/{train,dev,test}.
# Options go to local/synthesize.py (see its --help): --num_train, --num_dev, --num_test, --nj, --seed.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in espeak-ng flite sox; do
    command -v "$tool" >/dev/null || { echo "local/data.sh: $tool is missing (apt-get install espeak-ng flite sox)" >&2; exit 1; }
done
python3 local/synthesize.py "$@"
if [ -x utils/validate_data_dir.sh ]; then
    for split in train dev test; do
        utils/validate_data_dir.sh --no-feats data/${split}
    done
fi
# The plugin's own check of what was written: readable, finite, in-range audio long enough for the
# models' subsampling (0.1 s), and a transcript for every utterance; bad ones are named.
for split in train dev test; do
    python3 -m espnet_rwkv.data_check "data/${split}" --min_seconds 0.1
done
