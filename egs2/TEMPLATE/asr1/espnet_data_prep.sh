#!/usr/bin/env bash
# asr.sh stage 1 for a recipe whose corpus ESPnet's own recipe already prepares: runs ESPnet's
# egs2/<corpus>/asr1/local/data.sh for this recipe, so that its data/ comes out as ESPnet's would.
# Usage, from a recipe directory (as asr.sh runs local/data.sh):
#   ../../TEMPLATE/asr1/espnet_data_prep.sh <corpus> [options of ESPnet's local/data.sh]
# The ESPnet checkout: $ESPNET_ROOT, else the one that the recipe's asr.sh link points into
# (made by egs2/TEMPLATE/asr1/setup_recipe.sh). The corpus location comes from the recipe's db.sh.
set -euo pipefail
corpus=${1:?usage: $0 <corpus in ESPnet egs2/> [options of its local/data.sh]}
shift
recipe=$PWD

if [ -z "${ESPNET_ROOT:-}" ]; then
    [ -L asr.sh ] || { echo "espnet_data_prep.sh: set ESPNET_ROOT to an ESPnet checkout, or run egs2/TEMPLATE/asr1/setup_recipe.sh here first" >&2; exit 1; }
    ESPNET_ROOT=$(cd "$(dirname "$(readlink asr.sh)")/../../.." && pwd)
fi
source_recipe=${ESPNET_ROOT}/egs2/${corpus}/asr1
[ -f "${source_recipe}/local/data.sh" ] || {
    echo "espnet_data_prep.sh: ${source_recipe}/local/data.sh is missing (ESPNET_ROOT=${ESPNET_ROOT})" >&2; exit 1; }

# A view of this recipe in which local/ is ESPnet's: ESPnet's data.sh finds its helpers in local/ and
# everything else (db.sh, path.sh, utils/, data/, downloads/) in this recipe, where its output stays.
mkdir -p data downloads
view=$(mktemp -d)
trap 'rm -rf "${view}"' EXIT
for entry in *; do
    [ "${entry}" = local ] || ln -s "${recipe}/${entry}" "${view}/${entry}"
done
ln -s "${source_recipe}/local" "${view}/local"
cd "${view}"
echo "espnet_data_prep.sh: ${source_recipe}/local/data.sh $*"
local/data.sh "$@"
