#!/usr/bin/env bash
# A SoftHSM development token with the box's three keys and their certificate requests, from a
# fresh machine, using only `drimbox hsm`. Usage: hsm/dev-token.sh CONFIG.toml OUT_DIR
# Set SOFTHSM2_CONF first to keep the token out of the system store (/var/lib/softhsm/tokens).
set -euo pipefail
cfg=${1:?usage: dev-token.sh CONFIG.toml OUT_DIR}
out=${2:?usage: dev-token.sh CONFIG.toml OUT_DIR}
name=${DRIMBOX_NAME:-DRIMBOX-DEV}
structure=${DRIMBOX_STRUCTURE_ID:-499700367909006}
org=${DRIMBOX_ORG:-CABINET DEV}
mkdir -p "$out"
drimbox hsm init -c "$cfg"
for label in auth sign server; do
  drimbox hsm status -c "$cfg" | grep -q "private key '$label'" || drimbox hsm keygen -c "$cfg" --label "$label"
done
drimbox hsm csr -c "$cfg" --label auth --subject "CN=$name,OU=$structure,O=$org,C=FR" --out "$out/auth.csr"
drimbox hsm csr -c "$cfg" --label sign --subject "CN=$name,OU=$structure,O=$org,C=FR" --out "$out/sign.csr"
drimbox hsm csr -c "$cfg" --label server --subject "CN=${DRIMBOX_HOST:-localhost},OU=$structure,O=$org,C=FR" \
  --dns "${DRIMBOX_HOST:-localhost}" --out "$out/server.csr"
echo "requests in $out: file auth.csr and sign.csr (ORG) and server.csr (SSL server) with IGC-Santé,"
echo "then: drimbox hsm import-cert -c $cfg --label auth --cert auth.pem (and sign, server)"
