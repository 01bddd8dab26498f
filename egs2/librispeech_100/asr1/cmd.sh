# Jobs run on this machine (ESPnet's "local" backend); see ESPnet's egs2/TEMPLATE/asr1/cmd.sh for clusters.
export train_cmd="run.pl"
export cuda_cmd="run.pl"
export decode_cmd="run.pl"
