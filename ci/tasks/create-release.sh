#!/usr/bin/env bash
# A dev release tarball of the tree in $REPO (its blobs built by build-blobs.sh):
#   $OUTPUT/boshy-istio-<version>.tgz
# The version comes from $VERSION, else the file $VERSION_FILE, else a timestamp.
# Locally: REPO=/tmp/boshy-istio-with-blobs OUTPUT=/tmp VERSION=1.0.0-dev.1 ci/tasks/create-release.sh
set -euo pipefail
command -v bosh >/dev/null || { echo "create-release: the bosh CLI is not on PATH" >&2; exit 1; }
repo=$(cd "${REPO:?set REPO to the repository with its blobs}" && pwd)
output=${OUTPUT:?set OUTPUT to where the tarball goes}
mkdir -p "$output"
output=$(cd "$output" && pwd)
version=${VERSION:-}
if [ -z "$version" ] && [ -n "${VERSION_FILE:-}" ]; then
  version=$(cat "$VERSION_FILE")
fi
version=${version:-0+dev.$(date +%s)}
cd "$repo"
bosh create-release --force --version "$version" --tarball "$output/boshy-istio-${version}.tgz"
echo "create-release: $output/boshy-istio-${version}.tgz" >&2
