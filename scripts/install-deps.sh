#!/usr/bin/env bash
# Installs exactly what marlin-serve needs to build and test, from Debian's packages.
# Idempotent: packages already present are skipped. Used by both README commands and by CI.
#
#   scripts/install-deps.sh            # build + test dependencies
#   scripts/install-deps.sh --fuzz     # also clang for the libFuzzer targets
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libssl-dev zlib1g-dev libc-ares-dev libre2-dev
  libgtest-dev libgmock-dev
  prometheus-cpp-dev nlohmann-json3-dev libcli11-dev
  kubectl python3 python3-yaml yamllint shellcheck openssl
)
if [[ ${1:-} == --fuzz ]]; then
  packages+=(clang libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all packages present"
fi

if [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "install-deps: no CUDA toolkit at /usr/local/cuda; building the CPU-only configuration" >&2
fi
