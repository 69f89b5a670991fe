#!/usr/bin/env bash
# The whole test suite, as `scripts/test` runs it (it installs what it needs; needs root).
# Locally: ci/tasks/test.sh (from anywhere).
set -euo pipefail
repo=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$repo"
exec scripts/test
