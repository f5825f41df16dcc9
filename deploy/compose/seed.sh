#!/usr/bin/env bash
# The one-shot `seed` step of docker-compose.yml: creates a demo client and a demo user through
# `tessera admin` (the AdminService of the running token service). Running it again changes
# nothing: what exists is left as it is.
#
# Environment (set in docker-compose.yml): SEED_ENDPOINT (the token service's gRPC URL),
# TESSERA_ADMIN__TOKEN (the admin credential, read by `tessera admin` itself), DEMO_CLIENT_ID,
# DEMO_REDIRECT_URI, DEMO_USERNAME, DEMO_USER_PASSWORD, and TESSERA_DATA_DIR (where the client
# secret is kept, a volume of its own).
set -euo pipefail

secret_file="$TESSERA_DATA_DIR/demo-client-secret"
umask 077

# A confidential client's secret is shown once, when it is created: keep it in the volume.
if tessera admin --endpoint "$SEED_ENDPOINT" client get "$DEMO_CLIENT_ID" >/dev/null 2>&1; then
  if [ -s "$secret_file" ]; then
    echo "seed: client $DEMO_CLIENT_ID exists"
  else
    # The client outlived the volume that held its secret: give it a new one.
    tessera admin --endpoint "$SEED_ENDPOINT" --json client rotate-secret "$DEMO_CLIENT_ID" \
      | sed -n 's/.*"client_secret":"\([^"]*\)".*/\1/p' >"$secret_file"
    echo "seed: client $DEMO_CLIENT_ID exists; its secret was lost and has been rotated"
  fi
else
  if ! created=$(tessera admin --endpoint "$SEED_ENDPOINT" --json client create --id "$DEMO_CLIENT_ID" \
      --name "Demo application" --grant client_credentials --grant password --grant refresh_token \
      --grant authorization_code --grant device_code --redirect-uri "$DEMO_REDIRECT_URI" \
      --scope "openid profile email offline_access api" --skip-consent 2>&1); then
    case "$created" in
      *"already exists"*) echo "seed: client $DEMO_CLIENT_ID was created by someone else meanwhile" ;;
      *) echo "seed: creating client $DEMO_CLIENT_ID failed: $created" >&2; exit 1 ;;
    esac
  else
    printf '%s\n' "$created" | sed -n 's/.*"client_secret":"\([^"]*\)".*/\1/p' >"$secret_file"
    echo "seed: created client $DEMO_CLIENT_ID"
  fi
fi
if [ ! -s "$secret_file" ]; then
  echo "seed: no secret for client $DEMO_CLIENT_ID in $secret_file" >&2
  exit 1
fi

# The password goes through standard input, never the command line.
if ! out=$(printf '%s' "$DEMO_USER_PASSWORD" \
    | tessera admin --endpoint "$SEED_ENDPOINT" user create --username "$DEMO_USERNAME" \
      --email "$DEMO_USERNAME@example.com" --name "Demo User" --password-stdin 2>&1); then
  case "$out" in
    *"already exists"*) echo "seed: user $DEMO_USERNAME exists" ;;
    *) echo "seed: creating user $DEMO_USERNAME failed: $out" >&2; exit 1 ;;
  esac
else
  echo "seed: created user $DEMO_USERNAME"
fi

echo "seed: done. The client secret is in the seed-data volume; print it with"
echo "  docker compose run --rm --no-deps -T --entrypoint cat seed $secret_file"
