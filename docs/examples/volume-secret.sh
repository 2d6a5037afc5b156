#!/usr/bin/env bash
# The volume-secret flow with curl and openssl only, as an instance's boot
# script would run it. Inputs (environment):
#   GATEWAY   https://127.0.0.1:8443
#   TLS_CA    trust anchor of the gateway certificate (standalone: DATA/tls/ca.pem)
#   CERT_DIR  output of `sovkeys instance issue-cert --out DIR` (cert.pem, key.pem, signing-key.pem)
#   INSTANCE  the instance id the certificate was issued for
#   VOLUME    the volume uuid
# Prints the 32-byte secret (hex) of the volume twice: after generate-secret
# and after decrypt-secret; they must be equal. Every request is signed with
# the instance key (HTTP Message Signatures, RFC 9421, over the method, the
# path and the body's Content-Digest, RFC 9530), as a tenant made with
# --require-request-signatures demands (docs/volume-secrets.md).
set -euo pipefail
: "${GATEWAY:?}" "${TLS_CA:?}" "${CERT_DIR:?}" "${INSTANCE:?}" "${VOLUME:?}"
# Relative paths are the caller's: resolve them before changing directory.
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
TLS_CA=$(abs "$TLS_CA")
CERT_DIR=$(abs "$CERT_DIR")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

sign() { # sign PATH BODY -> sets DIGEST, SIGINPUT, SIG (ECDSA P-256, r||s)
  DIGEST="sha-256=:$(printf '%s' "$2" | openssl dgst -sha256 -binary | base64 -w0):"
  local params hex
  params="(\"@method\" \"@path\" \"content-digest\");created=$(date +%s);nonce=\"$(openssl rand -hex 16)\";alg=\"ecdsa-p256-sha256\""
  printf '"@method": POST\n"@path": %s\n"content-digest": %s\n"@signature-params": %s' "$1" "$DIGEST" "$params" > base.txt
  openssl dgst -sha256 -sign "$CERT_DIR/key.pem" -out sig.der base.txt
  # openssl writes ASN.1 (r, s); RFC 9421 wants r||s, 32 bytes each.
  hex=$(openssl asn1parse -inform DER -in sig.der | awk -F: '/INTEGER/ { h = $NF; while (length(h) < 64) h = "0" h; printf "%s", substr(h, length(h) - 63) }')
  SIG="sk=:$(printf '%b' "$(printf '%s' "$hex" | sed 's/../\\x&/g')" | base64 -w0):"
  SIGINPUT="sk=$params"
}
call() { # call OP JSON -> response body on stdout, fails on non-200
  sign "/v1/encryption/$INSTANCE/$1" "$2"
  curl -sS --fail-with-body --tlsv1.3 --cacert "$TLS_CA" --cert "$CERT_DIR/cert.pem" --key "$CERT_DIR/key.pem" \
    -H 'Content-Type: application/json' -H "Content-Digest: $DIGEST" -H "Signature-Input: $SIGINPUT" -H "Signature: $SIG" \
    -d "$2" "$GATEWAY/v1/encryption/$INSTANCE/$1"
}
verify() { # verify NAME: NAME.bin signed by NAME.sig with the pinned signing key
  openssl dgst -sha256 -verify "$CERT_DIR/signing-key.pem" -signature "$1.sig" "$1.bin" >/dev/null
}
unwrap() { # wrapped.bin -> secret (hex) with the one-time RSA key
  openssl pkeyutl -decrypt -inkey rsa.pem -pkeyopt rsa_padding_mode:oaep \
    -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -in wrapped.bin | od -An -tx1 | tr -d ' \n'
}

# One-time RSA key for this call (DER SubjectPublicKeyInfo, base64).
openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out rsa.pem
pub=$(openssl pkey -in rsa.pem -pubout -outform DER | base64 -w0)

call generate-secret "{\"rsa_wrapping_key\":\"$pub\",\"volume_uuid\":\"$VOLUME\"}" > gen.json
jq -r .encrypted_secret gen.json | base64 -d > encrypted.bin
jq -r .encrypted_secret_signature gen.json | base64 -d > encrypted.sig
jq -r .wrapped_secret gen.json | base64 -d > wrapped.bin
jq -r .wrapped_secret_signature gen.json | base64 -d > wrapped.sig
verify encrypted && verify wrapped
echo "generate-secret: $(unwrap)"

# Later boots: decrypt the stored encrypted_secret with a fresh one-time key.
openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out rsa.pem
pub=$(openssl pkey -in rsa.pem -pubout -outform DER | base64 -w0)
enc=$(base64 -w0 encrypted.bin)
call decrypt-secret "{\"encrypted_secret\":\"$enc\",\"rsa_wrapping_key\":\"$pub\",\"volume_uuid\":\"$VOLUME\"}" > dec.json
jq -r .wrapped_secret dec.json | base64 -d > wrapped.bin
jq -r .wrapped_secret_signature dec.json | base64 -d > wrapped.sig
verify wrapped
echo "decrypt-secret: $(unwrap)"

# The same encrypted_secret presented for another volume fails clearly.
if call decrypt-secret "{\"encrypted_secret\":\"$enc\",\"rsa_wrapping_key\":\"$pub\",\"volume_uuid\":\"$VOLUME-other\"}" > other.json 2>/dev/null; then
  echo "moved encrypted_secret was accepted" >&2; exit 1
fi
echo "other volume: $(jq -r .message other.json)"
