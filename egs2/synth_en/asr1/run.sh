#!/usr/bin/env bash
# RWKV-BAT next to ESPnet's built-in chunk conformer transducer, on English synthesized offline.
# Every stage is ESPnet's asr.sh (driven by ../../TEMPLATE/asr1/asr_systems.sh); the plugin enters through --python.
#   ./run.sh                              # data, tokens, statistics; both systems trained, decoded
#                                         # (full utterance; streaming at 160/320/640 ms), scored, packed;
#                                         # RESULTS.md and wer_vs_latency.png
#   ./run.sh --stage 11 --systems rwkv_bat    # one system, from training on
#   ./run.sh --stage 12 --inference_nj 8  # any other asr.sh option passes through to every asr.sh call
# Two GPUs, one system on each (no --gpu_id: each run.sh sees one GPU):
#   ./run.sh --stop_stage 10                                             # shared: data, tokens, statistics
#   CUDA_VISIBLE_DEVICES=0 ./run.sh --stage 11 --systems rwkv_bat &
#   CUDA_VISIBLE_DEVICES=1 ./run.sh --stage 11 --systems conformer_chunk &
#   wait                                  # the one that ends last writes RESULTS.md and the plot for both
# Sizes: on a GPU 6000 training utterances and 30 epochs; on a CPU 600 utterances and 5 epochs.
# Uploads: exp/asr_<system>/hf_upload is the packed model with its card (espnet_rwkv.model_card), e.g.
#   huggingface-cli upload <user>/synth_en_asr_rwkv_bat exp/asr_rwkv_bat/hf_upload
set -euo pipefail
cd "$(dirname "$0")"

[ -x asr.sh ] || ../../TEMPLATE/asr1/setup_recipe.sh .
. ./path.sh

# Parallel jobs: one a core, up to 16 (nproc would count path.sh's OMP_NUM_THREADS=1 as one core).
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
nj=$(( cores < 16 ? cores : 16 ))
if python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    ngpu=1; data_opts="--num_train 6000 --nj ${nj}"; train_args=""
else
    # 600 utterances make ~22 steps an epoch: warm up in 100 steps, not the config's 1000.
    ngpu=0; data_opts="--num_train 600 --nj ${nj}"; train_args="--max_epoch 5 --scheduler_conf warmup_steps=100"
fi

asr_opts=(
    --lang en --asr_task asr_transducer --python "python3 -m espnet_rwkv.launch"
    --ngpu "${ngpu}" --nj "${nj}" --inference_nj "${nj}" --gpu_inference false
    --feats_type raw --audio_format wav --token_type char --use_lm false
    --train_set train --valid_set dev --test_sets test
    --local_data_opts "${data_opts}"
    --inference_asr_model valid.loss.ave.pth
    --skip_upload false --skip_upload_hf false  # stage 14 packs; the uploads (15, 16) are past the default --stop_stage
)
systems="rwkv_bat conformer_chunk"
# ESPnet 202611's chunk conformer cannot decode 160 ms windows with this frontend (n_fft 512): the
# first window gives 14 feature frames, conv2d subsampling makes 2 frames of them, and its
# chunk_forward drops the first and last frame of every window, leaving none; rel_shift then fails
# ("invalid storage offset -1") whatever the left_context. It decodes from 320 ms on.
declare -A decodes=(
    [rwkv_bat]="full streaming_160ms streaming_320ms streaming_640ms"
    [conformer_chunk]="full streaming_320ms streaming_640ms"
)
plot_opts=(--metric wer --test_sets test)
corpus=synth_en lang=en

. ../../TEMPLATE/asr1/asr_systems.sh
run_systems "$@"
