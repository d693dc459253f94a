#!/bin/sh
# The image's entrypoint (runs as postgres). The first argument is the role:
#   primary [postgres options]   initdb on first start (the replica role, its
#                                pg_hba line), then PostgreSQL
#   standby [postgres options]   pg_basebackup from $PRIMARY_HOST on first start
#                                (progress in the log), standby.signal, then PostgreSQL
#   relay [walstream relay options]
#                                walstream relay, admitting the standbys behind it
#                                as the primary does (below)
#   anything else                run as given (walstream's commands)
# The replica role's password comes from the environment: REPLICA_PASSWORD on
# the primary, PGPASSWORD (read by libpq and walstream) everywhere else, so it
# is never an argument that ps would show.
set -eu

role=${1:-}
case "$role" in
primary|standby) shift ;;
relay)
  shift
  # The standbys behind the relay log in as they do on the primary: the
  # replica role, scram-sha-256, from the compose network. Its verifier is
  # made here from PGPASSWORD (the password the relay itself uses upstream),
  # fed to walstream passwd on stdin, never an argument; both files are
  # readable by postgres only, inside the container.
  conf=${HOME:-/var/lib/postgresql}/relay
  (umask 077 && mkdir -p "$conf")
  echo "host replication replica samenet scram-sha-256" >"$conf/pg_hba.conf"
  printf '%s\n%s\n' "${PGPASSWORD:?PGPASSWORD is not set}" "$PGPASSWORD" \
    | walstream passwd replica >"$conf/passwords" 2>/dev/null || true
  [ -s "$conf/passwords" ] || { echo "walstream passwd made no verifier" >&2; exit 1; }
  exec walstream relay --hba "$conf/pg_hba.conf" --passwords "$conf/passwords" "$@"
  ;;
*) exec "$@" ;;
esac

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ "$role" = primary ]; then
    initdb -D "$PGDATA" --auth-local=trust --auth-host=scram-sha-256
    # Single-user mode reads the statement from stdin: the password is never
    # an argument, and no server listens before the role exists.
    pw=$(printf '%s' "${REPLICA_PASSWORD:?REPLICA_PASSWORD is not set}" | sed "s/'/''/g")
    printf "CREATE ROLE replica LOGIN REPLICATION PASSWORD '%s';\n" "$pw" \
      | postgres --single -D "$PGDATA" postgres >/dev/null
    # samenet: every subnet the server has an address in, that is the compose
    # network, whatever subnet Docker gave it.
    echo "host replication replica samenet scram-sha-256" >>"$PGDATA/pg_hba.conf"
  else
    : "${PRIMARY_HOST:?PRIMARY_HOST is not set}"
    # As a replication connection, the one pg_hba admits: a plain one would
    # log "no pg_hba.conf entry" on the primary at every try.
    until pg_isready -q -h "$PRIMARY_HOST" -U replica -d replication=true; do sleep 1; done
    echo "pg_basebackup from $PRIMARY_HOST"
    pg_basebackup -h "$PRIMARY_HOST" -U replica -D "$PGDATA" -X stream -c fast -P -v
    touch "$PGDATA/standby.signal"
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
