# Sourced by the recipes' run.sh (. ../../TEMPLATE/asr1/asr_systems.sh): ESPnet's asr.sh for several
# systems on one corpus, run from the recipe directory.
#
# run_systems [--stage N] [--stop_stage N] [--systems "a b"] [asr.sh options ...]
#   stages 1-10 once (data, formatting, tokens, statistics: the systems share a frontend),
#   then per system (${conf_dir}/train_<system>.yaml, exp/asr_<system>):
#     stage 11 training, with a progress line per logged interval and per epoch on the console;
#     stages 12-13 once per decode (conf/decode_<decode>.yaml, exp/asr_<system>/decode_<decode>),
#       with decoding progress;
#     for the systems in onnx_chunk_ms: export to sherpa-onnx (espnet_rwkv.export_onnx), decode the
#       test sets with sherpa-onnx (espnet_rwkv.onnx.decode_dir), score it with stage 13
#       (exp/asr_<system>/decode_sherpa_onnx_<ms>ms);
#     stage 14 packing, then espnet_rwkv.model_card: the model card in the zip and
#       exp/asr_<system>/hf_upload; stage 15 (Hugging Face upload) when --stop_stage asks for it;
#   then, when stage 13 ran, exp/RESULTS.md (ESPnet's show_asr_result.sh over exp/) and
#   exp/wer_vs_latency.png. The recipe's committed RESULTS.md is never written by a run.
# --stage and --stop_stage (default 14) bound all of it; every other option goes to every asr.sh call.
#
# The caller sets:
#   asr_opts          array of asr.sh options for every call (--asr_task, --python, data sets, tokens, ...)
#   systems           the systems run by default
#   conf_dir          where train_<system>.yaml are (default conf)
#   decodes           associative array: system -> its decodes
#   onnx_chunk_ms     associative array: system -> the chunk (ms) of its sherpa-onnx export (optional)
#   parallel_systems  true: the systems' stages 11-15 run side by side (one core each on a CPU)
#   train_args        --asr_args of stage 11
#   plot_opts         array of options of pyscripts/plot_wer_vs_latency.py here (--metric, --test_sets)
#   corpus, lang      for the model card

# This folder, egs2/TEMPLATE/asr1, where the shared scripts are.
template_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

run_systems() {
    local stage=1 stop_stage=14 pass=() lo hi system pids=() failed=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --stage) stage=$2; shift 2 ;;
            --stop_stage) stop_stage=$2; shift 2 ;;
            --systems) systems=$2; shift 2 ;;
            *) pass+=("$1"); shift ;;
        esac
    done
    conf_dir=${conf_dir:-conf}
    # span A B: the part of stages A..B inside --stage..--stop_stage, as lo..hi; false if none.
    span() {
        lo=$(( stage > $1 ? stage : $1 )); hi=$(( stop_stage < $2 ? stop_stage : $2 ))
        [ "${lo}" -le "${hi}" ]
    }
    asr() {
        ./asr.sh "${asr_opts[@]}" --stage "$1" --stop_stage "$2" "${@:3}" "${pass[@]}"
    }

    for system in ${systems}; do
        [ -f "${conf_dir}/train_${system}.yaml" ] || { echo "run.sh: no ${conf_dir}/train_${system}.yaml" >&2; return 1; }
        [ -n "${decodes[${system}]+set}" ] || { echo "run.sh: no decodes listed for ${system}" >&2; return 1; }
    done
    if span 1 10; then
        asr "${lo}" "${hi}" --asr_config "${conf_dir}/train_${systems%% *}.yaml"
    fi
    for system in ${systems}; do
        if [ "${parallel_systems:-false}" = true ]; then
            run_system "${system}" &
            pids+=($!)
        else
            run_system "${system}"
        fi
    done
    for pid in "${pids[@]}"; do
        wait "${pid}" || failed=1
    done
    [ "${failed}" = 0 ] || { echo "run.sh: a system failed (its log is under exp/)" >&2; return 1; }
    if span 13 13; then  # after scoring
        scripts/utils/show_asr_result.sh exp > exp/RESULTS.md
        python3 "${template_dir}/pyscripts/plot_wer_vs_latency.py" --exp exp "${plot_opts[@]}" --out exp/wer_vs_latency.png
        echo "run.sh: results in exp/RESULTS.md and exp/wer_vs_latency.png"
    fi
}

# run_system SYSTEM: stages 11-15 of one system (within --stage..--stop_stage).
run_system() {
    local system=$1 decode packed ms onnx_dir onnx_opts=()
    local system_opts=(--asr_config "${conf_dir}/train_${system}.yaml" --asr_tag "${system}")
    local exp=exp/asr_${system}
    if span 11 11; then
        with_progress "${exp}/train.log" "${system}" \
            asr "${lo}" "${hi}" "${system_opts[@]}" --asr_args "${train_args}"
    fi
    for decode in ${decodes[${system}]}; do
        if span 12 13; then
            with_progress "${exp}/decode_${decode}" "${system} ${decode}" \
                asr "${lo}" "${hi}" "${system_opts[@]}" \
                --inference_config "conf/decode_${decode}.yaml" --inference_tag "decode_${decode}"
        fi
    done
    ms=""
    declare -p onnx_chunk_ms >/dev/null 2>&1 && ms=${onnx_chunk_ms[${system}]:-}
    if [ -n "${ms}" ] && span 12 13; then
        onnx_dir=${exp}/onnx_${ms}ms
        python3 -m espnet_rwkv.export_onnx --model "${exp}" --output_dir "${onnx_dir}" --chunk_ms "${ms}"
        for test_set in $(test_sets); do
            python3 -m espnet_rwkv.onnx.decode_dir --onnx "${onnx_dir}" --data_dir "dump/raw/${test_set}" \
                --output_dir "${exp}/decode_sherpa_onnx_${ms}ms/${test_set}"
        done
        asr 13 13 "${system_opts[@]}" --inference_tag "decode_sherpa_onnx_${ms}ms"
    fi
    [ -n "${ms}" ] && [ -d "${exp}/onnx_${ms}ms" ] && onnx_opts=(--onnx_dir "${exp}/onnx_${ms}ms")
    if span 14 14; then
        asr 14 14 "${system_opts[@]}"
        # The zip that stage 14 just wrote (exp/asr_<system>/asr_<system>_<inference model>.zip).
        packed=$(ls -t "${exp}"/*.zip)
        packed=${packed%%$'\n'*}
        python3 -m espnet_rwkv.model_card --asr_exp "${exp}" --packed_model "${packed}" \
            --corpus "${corpus}" --lang "${lang}" "${onnx_opts[@]}"
    fi
    if span 15 15; then  # the Hugging Face upload of the zip with its card, when --stop_stage asks for it
        asr 15 15 "${system_opts[@]}"
    fi
}

# with_progress LOG LABEL COMMAND...: run COMMAND; meanwhile print progress read from LOG (a training log, or
# a decode folder whose logdir/asr_inference.*.log it follows) with espnet_rwkv.progress.
with_progress() {
    local log=$1 label=$2 pid watcher status=0
    shift 2
    "$@" &
    pid=$!
    python3 -m espnet_rwkv.progress --log "${log}" --label "${label}" --pid "${pid}" &
    watcher=$!
    wait "${pid}" || status=$?
    wait "${watcher}" || true
    return "${status}"
}

# The --test_sets of asr_opts and of the options passed through (the last one given wins, as in asr.sh).
test_sets() {
    local args=("${asr_opts[@]}" "${pass[@]}") i sets=""
    for ((i = 0; i < ${#args[@]} - 1; i++)); do
        [ "${args[i]}" = --test_sets ] && sets=${args[i + 1]}
    done
    echo "${sets}"
}
