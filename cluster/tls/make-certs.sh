#!/usr/bin/env bash
# Make a private CA and one certificate (for scheduler, workers and clients) signed by it.
#   cluster/tls/make-certs.sh OUT_DIR [HOSTNAME_OR_IP ...]
# Writes OUT_DIR/ca.pem, OUT_DIR/cert.pem, OUT_DIR/key.pem. Hosts default to localhost and
# 127.0.0.1; give the scheduler's real names/IPs for a multi-host cluster.
set -euo pipefail
out=${1:?usage: make-certs.sh OUT_DIR [HOST ...]}
shift || true
hosts=("$@")
[ ${#hosts[@]} -eq 0 ] && hosts=(localhost 127.0.0.1)
mkdir -p "$out"
san=""
for h in "${hosts[@]}"; do
  if [[ $h =~ ^[0-9.]+$ ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san=${san%,}
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=daskglm-ca" \
  -keyout "$out/ca-key.pem" -out "$out/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=dask" \
  -keyout "$out/key.pem" -out "$out/cert.csr" 2>/dev/null
printf "subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n" "$san" > "$out/ext.cnf"
openssl x509 -req -in "$out/cert.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
  -days 365 -extfile "$out/ext.cnf" -out "$out/cert.pem" 2>/dev/null
rm -f "$out/cert.csr" "$out/ext.cnf" "$out/ca.srl"
chmod 600 "$out/key.pem" "$out/ca-key.pem"
echo "wrote $out/ca.pem $out/cert.pem $out/key.pem (for: ${hosts[*]})"
