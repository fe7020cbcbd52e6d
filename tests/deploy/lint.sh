#!/usr/bin/env bash
# yamllint over deploy/ and shellcheck over the shell scripts of deploy/, scripts/ and
# tests/deploy/. Exits 77 (ctest: skipped) when neither tool is installed.
#
#   tests/deploy/lint.sh [REPO_ROOT]
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$root"

ran=0
status=0
if command -v yamllint >/dev/null; then
  ran=1
  echo "yamllint deploy/"
  yamllint --strict -c deploy/.yamllint.yaml deploy/ || status=1
else
  echo "NOTE: yamllint not installed (apt-get install yamllint)"
fi
if command -v shellcheck >/dev/null; then
  ran=1
  mapfile -t scripts < <(find deploy scripts tests/deploy -type f \( -name '*.sh' -o -path 'scripts/*' \) \
    -exec grep -lE '^#!.*(ba)?sh' {} + | sort)
  # SC1091: files sourced at run time (device-bundle/env.sh) are not in a checkout.
  echo "shellcheck ${scripts[*]}"
  shellcheck -e SC1091 "${scripts[@]}" || status=1
else
  echo "NOTE: shellcheck not installed (apt-get install shellcheck)"
fi
((ran)) || { echo "SKIP: neither yamllint nor shellcheck is installed"; exit 77; }
((status == 0)) && echo "lint: clean"
exit "$status"
