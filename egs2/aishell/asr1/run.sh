#!/usr/bin/env bash
# RWKV-BAT against ESPnet's chunk conformer transducer on AISHELL-1, the comparison of An & Zhang
# (arXiv 2309.14758): ~92 M parameters each (characters), decoded streaming at 160/320/640 ms windows
# and full utterance; scored in CER. Stages and options as in ../../synth_en/asr1/run.sh (../../TEMPLATE/asr1/asr_systems.sh):
#   ./run.sh                                   # everything, both systems, on one GPU
#   ./run.sh --stop_stage 10                   # then one system per GPU:
#   CUDA_VISIBLE_DEVICES=0 ./run.sh --stage 11 --systems rwkv_bat &
#   CUDA_VISIBLE_DEVICES=1 ./run.sh --stage 11 --systems conformer_chunk &
# Needs: ESPnet's scripts and its aishell recipe (ESPNET_ROOT, see ../../TEMPLATE/asr1/setup_recipe.sh), AISHELL-1 in
# $AISHELL (db.sh; downloaded there otherwise).
# Not run by this project (no corpus, no GPU in CI); test/test_recipe.py builds both configs and steps them.
set -euo pipefail
cd "$(dirname "$0")"

[ -x asr.sh ] || ../../TEMPLATE/asr1/setup_recipe.sh .
. ./path.sh

asr_opts=(
    --lang zh --asr_task asr_transducer --python "python3 -m espnet_rwkv.launch"
    --ngpu 1 --nj 32 --inference_nj 32 --gpu_inference false
    --feats_type raw --audio_format wav --speed_perturb_factors "0.9 1.0 1.1"
    --token_type char --use_lm false
    --train_set train --valid_set dev --test_sets "dev test"
    --inference_asr_model valid.loss.ave.pth
    --skip_packing false  # stage 14 packs; the upload (15) is past the default --stop_stage
)
systems="rwkv_bat conformer_chunk"
declare -A decodes=(
    [rwkv_bat]="full streaming_160ms streaming_320ms streaming_640ms"
    [conformer_chunk]="full streaming_160ms streaming_320ms streaming_640ms"
)
train_args=""
plot_opts=(--metric cer --test_sets test)
corpus=aishell lang=zh

. ../../TEMPLATE/asr1/asr_systems.sh
run_systems "$@"
