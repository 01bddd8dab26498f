# Environment for asr.sh: the one shared by every recipe, in ../../TEMPLATE/asr1/path.sh. Resolved through
# links, so that it also holds in ../../TEMPLATE/asr1/espnet_data_prep.sh's view of this recipe.
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../TEMPLATE/asr1/path.sh"
