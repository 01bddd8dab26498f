# Environment for asr.sh, shared by every recipe (each recipe's path.sh sources this file): the
# repository's .venv (made by setup.sh at the repository root), Kaldi's utils, sclite. $PWD is the recipe.
repo_root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
. "${repo_root}/.venv/bin/activate"
export PATH=$PWD/utils:/usr/lib/sctk/bin:$PATH
# ESPnet's tools/sentencepiece_commands (spm_train, spm_encode, ... for word-piece tokens), which ESPnet's
# own path.sh puts on PATH: beside the asr.sh that setup_recipe.sh linked.
if [ -e "$PWD/asr.sh" ]; then
    espnet_tools=$(dirname "$(readlink -f "$PWD/asr.sh")")/../../../tools
    if [ -d "${espnet_tools}/sentencepiece_commands" ]; then
        export PATH=${espnet_tools}/sentencepiece_commands:$PATH
    fi
fi
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
export OMP_NUM_THREADS=1
# ESPnet's tokenize_text (asr.sh's scoring) decorates a function typeguard cannot find: one warning a call.
export PYTHONWARNINGS="ignore:instrumentor did not find the target function"
