# Environment for asr.sh, shared by every recipe (each recipe's path.sh sources this file): the
# repository's .venv (made by setup.sh at the repository root), Kaldi's utils, sclite. $PWD is the recipe.
repo_root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
. "${repo_root}/.venv/bin/activate"
export PATH=$PWD/utils:/usr/lib/sctk/bin:$PATH
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
export OMP_NUM_THREADS=1
