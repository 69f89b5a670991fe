#!/usr/bin/env bash
# Cuts final release <version>: uploads the blobs and the job and package tarballs to the
# blobstore of config/final.yml, writes releases/boshy-istio/boshy-istio-<version>.yml,
# .final_builds/ and config/blobs.yml (with object ids), commits them in $FINAL_REPO and
# leaves $OUTPUT/boshy-istio-<version>.tgz.
# Locally: REPO=/tmp/boshy-istio-with-blobs FINAL_REPO=/tmp/final OUTPUT=/tmp VERSION=1.0.0 \
#   BLOBSTORE_ACCESS_KEY_ID=... BLOBSTORE_SECRET_ACCESS_KEY=... ci/tasks/finalize-release.sh
set -euo pipefail
command -v bosh >/dev/null || { echo "finalize-release: the bosh CLI is not on PATH" >&2; exit 1; }
repo=$(cd "${REPO:?}" && pwd)
mkdir -p "${FINAL_REPO:?}" "${OUTPUT:?}"
final_repo=$(cd "$FINAL_REPO" && pwd)
output=$(cd "$OUTPUT" && pwd)
version=${VERSION:-$(cat "${VERSION_FILE:?set VERSION or VERSION_FILE}")}
: "${BLOBSTORE_ACCESS_KEY_ID:?}" "${BLOBSTORE_SECRET_ACCESS_KEY:?}"

cp -a "$repo/." "$final_repo/"
cd "$final_repo"
# Credentials only in the git-ignored private.yml, never in a commit.
cat > config/private.yml <<YAML
---
blobstore:
  options:
    access_key_id: ${BLOBSTORE_ACCESS_KEY_ID}
    secret_access_key: ${BLOBSTORE_SECRET_ACCESS_KEY}
YAML
bosh upload-blobs
bosh create-release --final --version "$version" --tarball "$output/boshy-istio-${version}.tgz"
rm config/private.yml
git add config/blobs.yml releases .final_builds
git -c user.name="boshy-istio CI" -c user.email=ci@boshy-istio.invalid \
  commit -m "Final release ${version}"
