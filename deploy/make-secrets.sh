#!/usr/bin/env bash
# Makes the secrets deploy/compose.yaml reads, each a file of its own:
#
#   bash deploy/make-secrets.sh            (into deploy/secrets, or $SECRETS_DIR)
#
# postgres-password and database-url (the same password), internal-token
# (every waifu's ORCHESTRATOR_TOKEN), admin-token (for you, Prometheus and
# the CLI), link-secret, hello-secret and notes-secret (each waifu's own). Random, 32 bytes
# as hex; a file that exists is kept, so running it again changes nothing.
# The directory is 0700 (nobody else on this machine reads it); the files
# are 0644 because each is bind-mounted into its container, whose user is
# not yours.
set -euo pipefail
dir=${SECRETS_DIR:-"$(cd "$(dirname "$0")" && pwd)/secrets"}
mkdir -p "$dir"
chmod 700 "$dir"
random() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
write() {
    if [ ! -e "$dir/$1" ]; then
        (umask 022 && printf '%s\n' "$2" >"$dir/$1.tmp" && mv "$dir/$1.tmp" "$dir/$1")
        echo "made $dir/$1"
    fi
}
write postgres-password "$(random)"
password=$(head -n1 "$dir/postgres-password")
write database-url "postgres://waifus:$password@postgres:5432/waifus"
for name in internal-token admin-token link-secret hello-secret notes-secret; do
    write "$name" "$(random)"
done
