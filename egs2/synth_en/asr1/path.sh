# Environment for asr.sh: the repository's .venv (made by ../../../setup.sh), Kaldi's utils, sclite.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
. "${repo_root}/.venv/bin/activate"
export PATH=$PWD/utils:/usr/lib/sctk/bin:$PATH
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
export OMP_NUM_THREADS=1
