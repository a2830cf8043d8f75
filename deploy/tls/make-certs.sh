#!/usr/bin/env bash
# A private CA and a certificate for each Settle process, with openssl. Every certificate is
# valid for its name, localhost and 127.0.0.1 (plus EXTRA_SANS), for servers and clients
# alike: the name is who the process is — the coordinator's --coordinator-identity, the
# participant name a service may register, the caller recorded as who began a transaction.
#
#   deploy/tls/make-certs.sh DIR NAME...
#   deploy/tls/make-certs.sh certs coordinator inventory order payment points checkout ops
#   EXTRA_SANS="DNS:settle.internal,IP:10.0.0.5" deploy/tls/make-certs.sh certs coordinator
#
# It writes DIR/ca.pem and DIR/ca-key.pem once (kept on later runs: keep ca-key.pem
# offline), and DIR/NAME.pem and DIR/NAME-key.pem for each NAME, replacing earlier ones —
# which is how to rotate: run it again for a name and every process using those files
# loads the new certificate within a second (or at once on SIGHUP), dropping nothing.
#
# Environment: DAYS (validity of the certificates, 90), CA_DAYS (of the CA, 3650), CA_NAME
# (its common name, "Settle CA"), EXTRA_SANS (more subjectAltName entries for every NAME).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 DIR NAME..." >&2
    exit 2
fi
dir="$1"
shift
DAYS="${DAYS:-90}"
CA_DAYS="${CA_DAYS:-3650}"
CA_NAME="${CA_NAME:-Settle CA}"
EXTRA_SANS="${EXTRA_SANS:-}"

umask 077
mkdir -p "${dir}"
# In DIR, so that moving a finished file into place is a rename, never a copy.
tmp="$(mktemp -d "${dir}/.make-certs.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT

key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

if [ ! -f "${dir}/ca.pem" ]; then
    key "${dir}/ca-key.pem"
    openssl req -x509 -new -key "${dir}/ca-key.pem" -sha256 -days "${CA_DAYS}" \
        -subj "/CN=${CA_NAME}" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "${dir}/ca.pem"
    echo "made CA ${dir}/ca.pem"
fi

for name in "$@"; do
    if ! [[ "${name}" =~ ^[A-Za-z0-9._-]{1,128}$ ]]; then
        echo "$0: ${name:-''} is not a name: 1 to 128 letters, digits, '.', '-' or '_'" >&2
        exit 2
    fi
    sans="DNS:${name},DNS:localhost,IP:127.0.0.1${EXTRA_SANS:+,${EXTRA_SANS}}"
    key "${tmp}/${name}-key.pem"
    openssl req -new -key "${tmp}/${name}-key.pem" -subj "/CN=${name}" -out "${tmp}/${name}.csr"
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=${sans}" >"${tmp}/${name}.ext"
    openssl x509 -req -in "${tmp}/${name}.csr" -CA "${dir}/ca.pem" -CAkey "${dir}/ca-key.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days "${DAYS}" -sha256 \
        -extfile "${tmp}/${name}.ext" -out "${tmp}/${name}.pem" 2>/dev/null
    # The key first, then the certificate, each moved into place whole: a process that
    # looks in between sees a key that does not match, keeps its current certificate, and
    # loads the pair when the certificate lands.
    mv "${tmp}/${name}-key.pem" "${dir}/${name}-key.pem"
    mv "${tmp}/${name}.pem" "${dir}/${name}.pem"
    echo "issued ${dir}/${name}.pem (${sans})"
done
