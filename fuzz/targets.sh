# Sourced by .ci/fuzz and fuzz/campaign.sh: each fuzz target and its dictionary (none: "").
declare -A GP_FUZZ_DICT=(
  [safetensors]=json [index]=json [config]=json [tensor_table]=json [token_map]=""
  [tokenizer_model]="" [tokenizer_json]=json [image]=image [chat]=api [openai_request]=api
  [http]=http
)
GP_FUZZ_TARGETS="safetensors index config tensor_table token_map tokenizer_model tokenizer_json image chat openai_request http"

# gp_fuzz_run TARGET WORKDIR ARGS...: runs build-fuzz/bin/TARGET_fuzz over its committed corpus
# and kept crash inputs; new inputs go to WORKDIR/corpus, crash inputs to WORKDIR/artifacts.
gp_fuzz_run() {
  local t=$1 work=$2
  shift 2
  mkdir -p "$work/corpus" "$work/artifacts"
  local dict=() seeds=(fuzz/corpus/"$t")
  [ -n "${GP_FUZZ_DICT[$t]}" ] && dict=(-dict=fuzz/dict/"${GP_FUZZ_DICT[$t]}".dict)
  [ -d fuzz/regressions/"$t" ] && seeds+=(fuzz/regressions/"$t")
  build-fuzz/bin/"$t"_fuzz "${dict[@]}" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "${seeds[@]}"
}
