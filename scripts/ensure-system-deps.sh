#!/usr/bin/env bash
# Installs the system packages nbstream's broker and test servers need, only when missing:
# a JDK (>= 17) and Maven for the embedded Kafka broker, gcc for python-qpid-proton (built from
# source), Mosquitto for the MQTT sink's tests, Go to build Google's Pub/Sub fake (pstest),
# Chromium to render the lag dashboard headless, and promtool to unit-test the alert rules.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv python3-dev)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "installing system packages: ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: please install ${need[*]} (e.g. sudo apt-get install ${need[*]})" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
# Debian starts these as services (:1883, :9090); the tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then
  for svc in mosquitto prometheus prometheus-node-exporter; do
    if [[ " ${need[*]} " == *" ${svc%%-*} "* ]]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
fi
