# Where ESPnet's aishell data preparation finds (or downloads) AISHELL-1: $AISHELL/data_aishell/.
AISHELL=${AISHELL:-downloads}
