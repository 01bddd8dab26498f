#!/usr/bin/env bash
# Link ESPnet's recipe scripts into an espnet_rwkv recipe, as ESPnet's own egs2/TEMPLATE/asr1/setup.sh does:
#   asr.sh, scripts/, pyscripts/ from ESPnet's egs2/TEMPLATE/asr1; utils/, steps/ from Kaldi's egs/wsj/s5.
# Usage: egs2/TEMPLATE/asr1/setup_recipe.sh <recipe_dir>
#   ESPNET_ROOT  an ESPnet checkout (tag v.<installed espnet version>); default: a shallow clone in egs2/.espnet
#   KALDI_ROOT   a Kaldi checkout; default: $ESPNET_ROOT/tools/kaldi, else a shallow clone in egs2/.espnet
# The clones need a network connection to GitHub (once); with both variables set nothing is downloaded.
set -euo pipefail
recipe=$(cd "${1:?usage: $0 <recipe_dir>}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "${here}/../../.." && pwd)
cache=${repo_root}/egs2/.espnet

if [ -z "${ESPNET_ROOT:-}" ]; then
    version=$("${repo_root}/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("espnet"))')
    ESPNET_ROOT=${cache}/espnet-${version}
    if [ ! -d "${ESPNET_ROOT}/egs2/TEMPLATE/asr1" ]; then
        echo "setup_recipe.sh: cloning ESPnet v.${version} into ${ESPNET_ROOT} (network)"
        git clone --quiet --depth 1 --branch "v.${version}" https://github.com/espnet/espnet "${ESPNET_ROOT}"
    fi
fi
if [ -z "${KALDI_ROOT:-}" ]; then
    KALDI_ROOT=${ESPNET_ROOT}/tools/kaldi
    if [ ! -d "${KALDI_ROOT}/egs/wsj/s5/utils" ]; then
        KALDI_ROOT=${cache}/kaldi
        [ -d "${KALDI_ROOT}/egs/wsj/s5/utils" ] || {
            echo "setup_recipe.sh: cloning Kaldi's scripts into ${KALDI_ROOT} (network)"
            git clone --quiet --depth 1 https://github.com/kaldi-asr/kaldi "${KALDI_ROOT}"
        }
    fi
fi
template=${ESPNET_ROOT}/egs2/TEMPLATE/asr1
for name in asr.sh scripts pyscripts; do
    [ -e "${template}/${name}" ] || { echo "setup_recipe.sh: ${template}/${name} is missing" >&2; exit 1; }
    ln -sfn "${template}/${name}" "${recipe}/${name}"
done
for name in utils steps; do
    ln -sfn "${KALDI_ROOT}/egs/wsj/s5/${name}" "${recipe}/${name}"
done
echo "setup_recipe.sh: ${recipe} uses ESPnet scripts from ${template} and Kaldi's from ${KALDI_ROOT}"
