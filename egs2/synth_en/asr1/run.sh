#!/usr/bin/env bash
# RWKV-BAT next to ESPnet's built-in chunk conformer transducer, on English synthesized offline.
# Every stage is ESPnet's asr.sh (driven by ../../TEMPLATE/asr1/asr_systems.sh); the plugin enters through --python.
#
# Two tasks, chosen by the machine (or --task):
#   digits     (no GPU) spoken digit strings, 3000 training utterances, word-piece tokens, 1.9 M-parameter
#              models trained side by side, one core each: the whole run takes 24 minutes on a 2-core CPU
#              (RWKV-BAT 5.1 % WER on unseen voices, RESULTS.md), as ESPnet's mini_an4 and yesno recipes
#              are for theirs;
#   sentences  (a GPU) open-vocabulary sentences (Debian's fortunes), 20000 training utterances, characters,
#              5.5 M-parameter models.
# Both train on unseen-voice-tested data (test voices are never heard in training), with the deployable
# configuration (kaldi_fbank features, stateless prediction network over the last two labels): RWKV-BAT is
# also exported to ONNX and decoded by sherpa-onnx (exp/asr_rwkv_bat/onnx_320ms, decode_sherpa_onnx_320ms).
#
#   ./run.sh                              # data, tokens, statistics; both systems trained, decoded
#                                         # (full utterance and streaming), scored, packed;
#                                         # exp/RESULTS.md and exp/wer_vs_latency.png
#   ./run.sh --task digits                # the CPU task on any machine
#   ./run.sh --stage 11 --systems rwkv_bat    # one system, from training on
#   ./run.sh --stage 12 --inference_nj 8  # any other asr.sh option passes through to every asr.sh call
# Two GPUs, one system on each (no --gpu_id: each run.sh sees one GPU):
#   ./run.sh --stop_stage 10                                             # shared: data, tokens, statistics
#   CUDA_VISIBLE_DEVICES=0 ./run.sh --stage 11 --systems rwkv_bat &
#   CUDA_VISIBLE_DEVICES=1 ./run.sh --stage 11 --systems conformer_chunk &
#   wait                                  # the one that ends last writes exp/RESULTS.md and the plot for both
# Uploads: exp/asr_<system>/hf_upload is the packed model with its card (espnet_rwkv.model_card), e.g.
#   huggingface-cli upload <user>/synth_en_asr_rwkv_bat exp/asr_rwkv_bat/hf_upload
# RESULTS.md here is the committed record (machine and date in it); a run writes only under exp/.
set -euo pipefail
cd "$(dirname "$0")"

[ -x asr.sh ] || ../../TEMPLATE/asr1/setup_recipe.sh .
. ./path.sh

if python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    task=sentences ngpu=1
else
    task=digits ngpu=0
fi
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --task) task=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done

# Parallel jobs: one a core, up to 16 (nproc would count path.sh's OMP_NUM_THREADS=1 as one core).
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
nj=$(( cores < 16 ? cores : 16 ))
systems="rwkv_bat conformer_chunk"
conf_dir=conf/${task}
case "${task}" in
    digits)
        data_opts="--task digits --num_train 3000 --num_dev 150 --num_test 300 --nj ${nj}"
        token_opts=(--token_type bpe --nbpe 30)
        # Two small models on a CPU: one core each, side by side.
        parallel_systems=true
        declare -A decodes=(
            [rwkv_bat]="full streaming_320ms"
            [conformer_chunk]="full streaming_320ms"
        ) ;;
    sentences)
        data_opts="--task sentences --num_train 20000 --num_dev 150 --num_test 150 --nj ${nj}"
        token_opts=(--token_type char)
        parallel_systems=false
        # ESPnet 202611's chunk conformer cannot decode 160 ms windows: the first window gives 14 feature
        # frames, conv2d subsampling makes 2 frames of them, and its chunk_forward drops the first and last
        # frame of every window, leaving none; rel_shift then fails ("invalid storage offset -1") whatever
        # the left_context. It decodes from 320 ms on.
        declare -A decodes=(
            [rwkv_bat]="full streaming_160ms streaming_320ms streaming_640ms"
            [conformer_chunk]="full streaming_320ms streaming_640ms"
        ) ;;
    *) echo "run.sh: --task is digits or sentences, not ${task}" >&2; exit 1 ;;
esac
declare -A onnx_chunk_ms=([rwkv_bat]=320)

asr_opts=(
    --lang en --asr_task asr_transducer --python "python3 -m espnet_rwkv.launch"
    --ngpu "${ngpu}" --nj "${nj}" --inference_nj "${nj}" --gpu_inference false
    --feats_type raw --audio_format wav "${token_opts[@]}" --use_lm false
    --train_set train --valid_set dev --test_sets test
    --local_data_opts "${data_opts}"
    --inference_asr_model valid.loss.ave.pth
    --skip_packing false  # stage 14 packs; the upload (15) is past the default --stop_stage
)
train_args=""
plot_opts=(--metric wer --test_sets test)
corpus=synth_en lang=en

. ../../TEMPLATE/asr1/asr_systems.sh
run_systems "${args[@]}"
