# Sourced by the recipes' run.sh (. ../../TEMPLATE/asr1/asr_systems.sh): ESPnet's asr.sh for several
# systems on one corpus, run from the recipe directory.
#
# run_systems [--stage N] [--stop_stage N] [--systems "a b"] [asr.sh options ...]
#   stages 1-10 once (data, formatting, tokens, statistics: the systems share a frontend),
#   then per system (conf/train_<system>.yaml, exp/asr_<system>):
#     stage 11 training;
#     stages 12-13 once per decode (conf/decode_<decode>.yaml, exp/asr_<system>/decode_<decode>);
#     stage 14 packing, then espnet_rwkv.model_card: the model card in the zip and
#       exp/asr_<system>/hf_upload; stages 15-16 (uploads) when --stop_stage asks for them;
#   then, when stage 13 ran, RESULTS.md (ESPnet's show_asr_result.sh over exp/) and wer_vs_latency.png.
# --stage and --stop_stage (default 14) bound all of it; every other option goes to every asr.sh call.
#
# The caller sets:
#   asr_opts   array of asr.sh options for every call (--asr_task, --python, data sets, tokens, ...)
#   systems    the systems run by default
#   decodes    associative array: system -> its decodes
#   train_args --asr_args of stage 11
#   plot_opts  array of options of pyscripts/plot_wer_vs_latency.py here (--metric, --test_sets)
#   corpus, lang for the model card

# This folder, egs2/TEMPLATE/asr1, where the shared scripts are.
template_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

run_systems() {
    local stage=1 stop_stage=14 pass=() lo hi system decode packed
    while [ $# -gt 0 ]; do
        case "$1" in
            --stage) stage=$2; shift 2 ;;
            --stop_stage) stop_stage=$2; shift 2 ;;
            --systems) systems=$2; shift 2 ;;
            *) pass+=("$1"); shift ;;
        esac
    done
    # span A B: the part of stages A..B inside --stage..--stop_stage, as lo..hi; false if none.
    span() {
        lo=$(( stage > $1 ? stage : $1 )); hi=$(( stop_stage < $2 ? stop_stage : $2 ))
        [ "${lo}" -le "${hi}" ]
    }
    asr() {
        ./asr.sh "${asr_opts[@]}" --stage "$1" --stop_stage "$2" "${@:3}" "${pass[@]}"
    }

    for system in ${systems}; do
        [ -f "conf/train_${system}.yaml" ] || { echo "run.sh: no conf/train_${system}.yaml" >&2; return 1; }
        [ -n "${decodes[${system}]+set}" ] || { echo "run.sh: no decodes listed for ${system}" >&2; return 1; }
    done
    if span 1 10; then
        asr "${lo}" "${hi}" --asr_config "conf/train_${systems%% *}.yaml"
    fi
    for system in ${systems}; do
        local system_opts=(--asr_config "conf/train_${system}.yaml" --asr_tag "${system}")
        if span 11 11; then
            asr "${lo}" "${hi}" "${system_opts[@]}" --asr_args "${train_args}"
        fi
        for decode in ${decodes[${system}]}; do
            if span 12 13; then
                asr "${lo}" "${hi}" "${system_opts[@]}" \
                    --inference_config "conf/decode_${decode}.yaml" --inference_tag "decode_${decode}"
            fi
        done
        if span 14 14; then
            asr 14 14 "${system_opts[@]}"
            # The zip that stage 14 just wrote (exp/asr_<system>/asr_<system>_<inference model>.zip).
            packed=$(ls -t "exp/asr_${system}"/*.zip)
            packed=${packed%%$'\n'*}
            python3 -m espnet_rwkv.model_card --asr_exp "exp/asr_${system}" --packed_model "${packed}" \
                --corpus "${corpus}" --lang "${lang}"
        fi
        if span 15 16; then  # uploads of the zip with its card, when --stop_stage asks for them
            asr "${lo}" "${hi}" "${system_opts[@]}"
        fi
    done
    if span 13 13; then  # after scoring
        # Several run.sh may finish together (one system per GPU): write each file whole.
        scripts/utils/show_asr_result.sh exp > "RESULTS.md.$$" && mv "RESULTS.md.$$" RESULTS.md
        python3 "${template_dir}/pyscripts/plot_wer_vs_latency.py" --exp exp "${plot_opts[@]}" --out wer_vs_latency.png
    fi
}
