# The corpus is synthesized by local/data.sh: no download location.
