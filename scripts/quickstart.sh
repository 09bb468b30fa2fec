#!/bin/sh
# From a fresh clone to an agent's verified access token, with curl and openssl only.
# Settings (environment): DATA_DIR (latchkey-data), LISTEN (127.0.0.1:8443), AGENT (pump01);
# SKIP_INSTALL=1 uses the `latchkey` on PATH; STOP=1 stops the server at the end.
set -eu
D=${DATA_DIR:-latchkey-data}; LISTEN=${LISTEN:-127.0.0.1:8443}; AGENT=${AGENT:-pump01}
T=$(mktemp -d)   # scratch files: server output, the verification key, the signature

# 1. Build and install `latchkey` into ~/.cargo/bin (the first build takes ~5 minutes on 2 cores).
[ "${SKIP_INSTALL:-0}" = 1 ] || cargo install --path authority --locked

# 2. Start the authority in the background. The first run creates $D: master key, database,
#    TLS certificate, CA file ($D/ca.pem) and the admin client ($D/admin-client.json).
latchkey serve --data-dir "$D" --listen "$LISTEN" >"$T/ready" 2>"$T/serve.log" &
PID=$!
[ "${STOP:-0}" = 1 ] && trap 'kill $PID; rm -rf "$T"' EXIT
until grep -q '^latchkey listening on ' "$T/ready"; do
  kill -0 $PID 2>/dev/null || { cat "$T/serve.log"; exit 1; }; sleep 0.2
done
S=$(sed -n 's/^latchkey listening on //p' "$T/ready")   # https://127.0.0.1:8443
admin() { latchkey "$@" --server "$S" --credentials "$D/admin-client.json"; }

# Small helpers: a JSON string field (the server's JSON is flat enough for sed), base64url.
field() { sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" | head -n 1; }
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
unb64url() {
  read -r s || true; s=$(printf '%s' "$s" | tr '_-' '/+')
  case $(( ${#s} % 4 )) in 2) s="$s==" ;; 3) s="$s=" ;; esac
  printf '%s' "$s" | openssl base64 -d -A
}

# 3. Create an agent (shared-secret profile). Its boarding configuration holds the initial
#    access token (IAT) that lets it register once.
admin agent create --entity-id "$AGENT" --name "Pump 1" --security-profile SHARED_SECRET
IAT=$(admin agent show "$AGENT" --json | field iat)

# 4. As the agent: register with the IAT (RFC 7591) to get client_id, client_secret and a
#    registration access token, then get an access token with an HS256 client assertion
#    (RFC 7523) signed with the client secret.
REG=$(curl -sS --fail-with-body --cacert "$D/ca.pem" -X POST "$S/api/agentmanagement/v3/register" \
  -H "Authorization: Bearer $IAT" -H 'Content-Type: application/json' -d '{}')
CLIENT_ID=$(printf '%s' "$REG" | field client_id)
CLIENT_SECRET=$(printf '%s' "$REG" | field client_secret)
NOW=$(date +%s)
HEAD=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
BODY=$(printf '{"iss":"%s","sub":"%s","aud":["southgate"],"iat":%s,"exp":%s,"jti":"%s"}' \
  "$CLIENT_ID" "$CLIENT_ID" "$NOW" $((NOW + 300)) "$(openssl rand -hex 16)" | b64url)
SIG=$(printf '%s.%s' "$HEAD" "$BODY" \
  | openssl dgst -sha256 -mac HMAC -macopt "key:$CLIENT_SECRET" -binary | b64url)
ANSWER=$(curl -sS --fail-with-body --cacert "$D/ca.pem" "$S/api/agentmanagement/v3/oauth/token" \
  -d grant_type=client_credentials \
  -d client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer \
  -d "client_assertion=$HEAD.$BODY.$SIG")
TOKEN=$(printf '%s' "$ANSWER" | field access_token)

# 5. Verify the access token (RS256) with the authority's public key: the key the token's `kid`
#    names is in the JWKS; token_key gives it as PEM for openssl.
KID=$(printf '%s' "${TOKEN%%.*}" | unb64url | field kid)
curl -sS --fail-with-body --cacert "$D/ca.pem" "$S/.well-known/jwks.json" | grep -q "\"kid\":\"$KID\""
PEM=$(curl -sS --fail-with-body --cacert "$D/ca.pem" \
  "$S/api/agentmanagement/v3/oauth/token_key?alg=RS256" | field value | sed 's/-----[A-Z ]*-----//g')
{ echo '-----BEGIN PUBLIC KEY-----'; printf '%s\n' "$PEM" | fold -w 64; echo '-----END PUBLIC KEY-----'; } >"$T/key.pem"
printf '%s' "${TOKEN##*.}" | unb64url >"$T/sig"
printf '%s' "${TOKEN%.*}" | openssl dgst -sha256 -verify "$T/key.pem" -signature "$T/sig"
echo "agent $CLIENT_ID's access token (kid $KID):"
printf '%s' "$TOKEN" | cut -d. -f2 | unb64url; echo
[ "${STOP:-0}" = 1 ] || echo "latchkey serves $S as process $PID (stop: kill $PID; log: $T/serve.log)"
