# Helpers sourced by image_gen/{train,infer}.sh and audio_gen/{train,infer,generate,train_prior}.sh.
# python_bin: $PYTHON if set, else the repository's .venv, else python3.
# flag NAME VAR: append "NAME value" to the array `args` when environment variable VAR is set and non-empty.
# switch NAME VAR: append "NAME" when VAR is 1, true or yes.
# launch SCRIPT ARGS...: run the script with python_bin; with NPROC=N (train.sh) under torchrun instead,
#   N processes on this machine (--standalone), or with TORCHRUN_ARGS (e.g. "--nnodes=2 --node_rank=0
#   --rdzv_backend=c10d --rdzv_endpoint=host:29500") on several machines.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

python_bin() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ -x "$repo_root/.venv/bin/python" ]]; then
    echo "$repo_root/.venv/bin/python"
  else
    echo python3
  fi
}

flag() {
  if [[ -n "${!2:-}" ]]; then
    args+=("$1" "${!2}")
  fi
}

switch() {
  case "${!2:-}" in
    1 | true | yes) args+=("$1") ;;
  esac
}

launch() {
  local python
  python="$(python_bin)"
  if [[ -n "${NPROC:-}" ]]; then
    local rendezvous=(--standalone)
    if [[ -n "${TORCHRUN_ARGS:-}" ]]; then
      read -r -a rendezvous <<< "$TORCHRUN_ARGS"
    fi
    exec "$python" -m torch.distributed.run --nproc_per_node="$NPROC" "${rendezvous[@]}" "$@"
  fi
  exec "$python" "$@"
}
