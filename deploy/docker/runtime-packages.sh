#!/usr/bin/env bash
# Prints, one per line, the Debian/Ubuntu packages that provide the shared libraries the given
# ELF binaries link directly (DT_NEEDED), leaving out the C/C++ runtime every base image has and
# the CUDA/driver libraries the CUDA runtime image and the NVIDIA container runtime provide.
# Libraries those packages need in turn come with them through apt's dependencies.
#
#   deploy/docker/runtime-packages.sh build/bin/marlin-server build/bin/marlin-cli
#
# Used by deploy/docker/Dockerfile's build stage to choose what its runtime stage installs, and
# by tests/deploy/check_runtime_libs.py. Needs ldd, objdump (binutils) and dpkg.
set -euo pipefail

# Packages of every base image (Debian slim, Ubuntu, nvidia/cuda): never listed.
readonly system_re='^(libc6|libgcc-s1|libstdc\+\+6)$'
# Provided by nvidia/cuda:*-runtime or mounted by the NVIDIA container runtime.
readonly cuda_re='^(cuda-|libcu|libnv|libnccl)'

# The dpkg package owning library file $1; merged-/usr systems record either /lib or /usr/lib.
owner() {
  local path=$1 candidate real
  real=$(readlink -f "$path")
  for candidate in "$path" "$real" "/usr${path#/usr}" "${path#/usr}" "/usr${real#/usr}" "${real#/usr}"; do
    if dpkg -S "$candidate" >/dev/null 2>&1; then
      dpkg -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1
      return 0
    fi
  done
  return 1
}

# Prints the package of each directly linked library of the binaries "$@" (repeats included).
list_packages() {
  local status=0 binary soname path pkg ldd_out
  local -a needed
  for binary in "$@"; do
    # ldd resolves every library; keep the ones the binary names itself.
    mapfile -t needed < <(objdump -p "$binary" | awk '$1 == "NEEDED" { print $2 }')
    ldd_out=$(ldd "$binary")
    for soname in "${needed[@]}"; do
      [[ $soname == ld-linux* ]] && continue  # the dynamic loader, part of libc6
      path=$(awk -v so="$soname" '$1 == so && $2 == "=>" { print $3 }' <<<"$ldd_out")
      if [[ -z $path || $path == "not" ]]; then
        [[ $soname =~ ^lib(cuda|nvidia-) ]] && continue  # the driver, mounted at run time
        echo "runtime-packages: $binary: $soname not found" >&2
        status=1
        continue
      fi
      # The CUDA toolkit's own libraries: the CUDA runtime image ships them.
      [[ $path == /usr/local/cuda* ]] && continue
      if ! pkg=$(owner "$path"); then
        echo "runtime-packages: $binary: $path belongs to no package" >&2
        status=1
        continue
      fi
      [[ $pkg =~ $system_re || $pkg =~ $cuda_re ]] || echo "$pkg"
    done
  done
  return "$status"
}

list_packages "$@" | sort -u
exit "${PIPESTATUS[0]}"
