# Environment for asr.sh: the repository's .venv (made by ../../../setup.sh), Kaldi's utils, sclite.
# Resolved through links: recipes that link this file, and ../../espnet_data_prep.sh's view of a recipe.
repo_root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
. "${repo_root}/.venv/bin/activate"
export PATH=$PWD/utils:/usr/lib/sctk/bin:$PATH
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
export OMP_NUM_THREADS=1
