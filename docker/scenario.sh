# The tutorial's steps, shared by docker/walkthrough.sh (a person watches) and
# docker/test.sh (CI): each step says what it shows, shows it, and checks it,
# failing with the concerned service's logs. Sourced after lib.sh. The relay's
# steps (ws_relay_scenario) come last, so the tutorial's come first unchanged.
# shellcheck shell=bash

# How long a commit is shown waiting with no synchronous standby left.
WS_HOLD_SECONDS=${WS_HOLD_SECONDS:-5}

WS_REPLICATION="SELECT application_name, client_addr, state, sync_state, sent_lsn, flush_lsn
  FROM pg_stat_replication ORDER BY application_name"

# "name:state:sync_state ..." of every walsender, for the checks.
ws_replication() {
  ws_sql postgres202 "SELECT coalesce(string_agg(application_name || ':' || state || ':' || sync_state,
    ' ' ORDER BY application_name), '') FROM pg_stat_replication"
}

ws_replication_is() { [ "$(ws_replication)" = "$1" ]; }

# ws_sql_is SVC EXPECTED QUERY: for ws_wait, which runs it again at every try.
ws_sql_is() { [ "$(ws_sql "$1" "$3" 2>/dev/null)" = "$2" ]; }

# The relay's /status (JSON), read inside its container with walstream's Python.
ws_relay_status() {
  docker exec "$(ws_cid relay)" python -c 'import json, sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:8080/status", timeout=10) as r:
    status = json.load(r)
if sys.argv[1:] == ["clients"]:
    print(" ".join(sorted(c["application_name"] + ":" + c["state"] + ":" + c["sync_state"]
                          for c in status["clients"])))
else:
    up, keys = status["upstream"], ("state", "host", "timeline", "flush_lsn", "server_wal_end_lsn")
    print("upstream: " + ", ".join(k + " " + str(up[k]) for k in keys))
    for c in status["clients"]:
        print("client:   " + ", ".join(k + " " + str(c[k]) for k in
              ("application_name", "client_addr", "state", "sync_state", "flush_lsn", "replay_lsn")))
    if not status["clients"]:
        print("client:   (none)")' "$@"
}

# "name:state:sync_state ..." of the relay's clients, for the checks.
ws_relay_clients_are() { [ "$(ws_relay_status clients)" = "$1" ]; }

ws_show_relay() {
  printf '   $ docker-compose -f docker/compose.yaml exec relay python -c ... http://127.0.0.1:8080/status\n'
  ws_relay_status | sed 's/^/   /'
}

ws_scenario() {
  say "Start the topology: postgres202 (primary), postgres203 (standby), walstream (receiver), relay and postgres204 behind it; replication is asynchronous"
  run_compose up -d
  ws_wait postgres202 120 "postgres202 accepts connections" ws_sql postgres202 "SELECT 1"
  ws_wait postgres203 120 "postgres203 accepts read-only connections" ws_sql postgres203 "SELECT 1"
  note "postgres203 was made with pg_basebackup from postgres202; its log shows the progress:"
  ws_compose logs --no-color postgres203 | grep -E 'pg_basebackup|kB \(' | sed 's/^/   /'
  ws_expect postgres203 "postgres203 is in recovery" "$(ws_sql postgres203 'SELECT pg_is_in_recovery()')" t

  say "pg_stat_replication on postgres202: postgres203, the relay and walstream stream, all async"
  ws_wait walstream 60 "postgres203, relay and walstream streaming" \
    ws_replication_is "postgres203:streaming:async relay:streaming:async walstream:streaming:async"
  ws_show postgres202 "$WS_REPLICATION"
  note "walstream's command line: the replica role's password came from PGPASSWORD, not an argument"
  docker top "$(ws_cid walstream)" -o pid,args | sed 's/^/   /'
  # A password reaches a command line as a conninfo's password= or a URI's
  # user:password@ (the relay's --passwords names a file of verifiers).
  local svc args
  for svc in "${WS_SERVICES[@]}"; do
    args=$(docker top "$(ws_cid "$svc")" -o pid,args)
    if grep -qi 'password=' <<<"$args" || grep -qF ":${REPLICA_PASSWORD:-replica}@" <<<"$args"; then
      ws_fail "a password is on a command line in $svc" "$svc"
    fi
  done
  note "ok: no process of the topology has a password among its arguments"

  say "Write on the primary, read it on the standby"
  ws_sql postgres202 "CREATE TABLE tutorial (id int PRIMARY KEY, note text NOT NULL,
    at timestamptz NOT NULL DEFAULT now())"
  ws_show postgres202 "INSERT INTO tutorial (id, note) VALUES (1, 'written on postgres202, asynchronous')"
  ws_wait postgres203 60 "row 1 replayed on postgres203" \
    ws_sql_is postgres203 1 "SELECT count(*) FROM tutorial WHERE id = 1"
  ws_show postgres203 "SELECT id, note FROM tutorial"

  say "synchronous_standby_names = 'FIRST 1 (postgres203, walstream)': postgres203 is sync, walstream potential (the relay, not named, async)"
  ws_show postgres202 "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (postgres203, walstream)'"
  ws_sql postgres202 "SELECT pg_reload_conf()" >/dev/null
  ws_wait postgres202 60 "postgres203 sync, walstream potential" \
    ws_replication_is "postgres203:streaming:sync relay:streaming:async walstream:streaming:potential"
  ws_show postgres202 "$WS_REPLICATION"
  ws_show postgres202 "INSERT INTO tutorial (id, note) VALUES (2, 'confirmed by postgres203')"

  say "Stop postgres203: walstream takes over as the synchronous standby, commits still complete"
  run_compose stop postgres203
  ws_wait walstream 60 "walstream sync alone" ws_replication_is "relay:streaming:async walstream:streaming:sync"
  ws_show postgres202 "$WS_REPLICATION"
  # A commit that waited would hang here: a bound turns that into a failure.
  if ! timeout 60 docker exec -i "$(ws_cid postgres202)" psql -X -q -v ON_ERROR_STOP=1 -U postgres \
    -c "INSERT INTO tutorial (id, note) VALUES (3, 'confirmed by walstream')"; then
    ws_fail "a commit with walstream as the synchronous standby did not complete" walstream postgres202
  fi
  ws_show postgres202 "SELECT id, note FROM tutorial ORDER BY id"

  say "Stop walstream too: no standby named in synchronous_standby_names is left, so a commit waits"
  run_compose stop walstream
  ws_wait postgres202 60 "only the relay left" ws_replication_is "relay:streaming:async"
  note "\$ docker-compose -f docker/compose.yaml exec postgres202 psql -U postgres -c \"INSERT ... (4, 'waited for walstream')\" &"
  docker exec -i "$(ws_cid postgres202)" psql -X -q -v ON_ERROR_STOP=1 -U postgres \
    -c "INSERT INTO tutorial (id, note) VALUES (4, 'waited for walstream')" &
  local waiting=$!
  ws_wait postgres202 60 "the commit waits for a synchronous standby (wait_event SyncRep)" \
    ws_sql_is postgres202 1 "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
  sleep "$WS_HOLD_SECONDS"
  kill -0 "$waiting" 2>/dev/null || ws_fail "the commit returned with no synchronous standby" postgres202
  note "ok: after ${WS_HOLD_SECONDS}s the INSERT has still not returned"
  ws_show postgres202 "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity
    WHERE wait_event = 'SyncRep'"
  ws_expect postgres202 "row 4 is not visible while its commit waits" \
    "$(ws_sql postgres202 'SELECT count(*) FROM tutorial WHERE id = 4')" 0

  say "Start walstream again: it confirms the WAL it missed, and the waiting commit returns"
  run_compose start walstream
  local deadline=$((SECONDS + 60))
  while kill -0 "$waiting" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || ws_fail "the waiting commit did not return after walstream restarted" walstream postgres202
    ws_running walstream || ws_fail "walstream stopped after its restart" walstream
    sleep 0.5
  done
  wait "$waiting" || ws_fail "the waiting INSERT failed" postgres202
  note "ok: the INSERT returned"
  ws_show postgres202 "SELECT id, note FROM tutorial ORDER BY id"
  ws_wait walstream 60 "walstream sync" ws_replication_is "relay:streaming:async walstream:streaming:sync"
  ws_show postgres202 "$WS_REPLICATION"

  say "The files in walstream's volume: the segments it received, the current one .partial"
  run_in walstream ls -l /wal
  local first flush start
  first=$(docker exec "$(ws_cid walstream)" ls /wal | head -n 1)
  # The first file's segment start (16 MB segments, the default) is where
  # the decoder looks for the first record.
  start=$(printf '%X/%X' "$((16#${first:8:8}))" "$((16#${first:16:8} * 16#1000000))")
  flush=$(ws_sql postgres202 "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'walstream'")

  say "walstream waldump --stats over them, from the first segment to what walstream has flushed"
  local stats
  printf '   $ docker-compose -f docker/compose.yaml exec walstream walstream waldump -p /wal -s %s -e %s --stats\n' \
    "$start" "$flush"
  stats=$(docker exec "$(ws_cid walstream)" walstream waldump -p /wal -s "$start" -e "$flush" --stats) \
    || ws_fail "walstream waldump --stats failed" walstream
  printf '%s\n' "$stats" | sed 's/^/   /'
  # The four rows written above are four heap inserts and four commits at least.
  local heap commits
  heap=$(printf '%s\n' "$stats" | awk '$1 == "Heap" {print $2}')
  commits=$(printf '%s\n' "$stats" | awk '$1 == "Transaction" {print $2}')
  if [ "${heap:-0}" -lt 4 ] || [ "${commits:-0}" -lt 4 ]; then
    ws_fail "waldump --stats: expected 4 Heap and 4 Transaction records at least, got ${heap:-none} and ${commits:-none}" walstream
  fi
  note "ok: $heap Heap records, $commits Transaction records"

  ws_relay_scenario
}

# The cascade: postgres202 -> relay -> postgres204, then synchronous through it.
ws_relay_scenario() {
  say "The relay: walstream relay streams from postgres202 and serves postgres204, made with pg_basebackup from postgres202, its primary_conninfo naming the relay"
  note "the relay's command line (the standbys' password verifier is in a file the entrypoint made):"
  docker top "$(ws_cid relay)" -o pid,args | sed 's/^/   /'
  ws_wait postgres204 120 "postgres204 accepts read-only connections" ws_sql postgres204 "SELECT 1"
  ws_expect postgres204 "postgres204 is in recovery" "$(ws_sql postgres204 'SELECT pg_is_in_recovery()')" t
  ws_wait postgres204 60 "rows 1-4 (written on postgres202) replayed on postgres204" \
    ws_sql_is postgres204 4 "SELECT count(*) FROM tutorial"
  ws_show postgres204 "SELECT id, note FROM tutorial ORDER BY id"
  ws_show postgres204 "SELECT status, sender_host, sender_port, flushed_lsn FROM pg_stat_wal_receiver"
  ws_expect postgres204 "postgres204 streams from the relay" \
    "$(ws_sql postgres204 'SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver')" \
    "streaming|relay|5432"
  ws_wait relay 60 "the relay's /status lists postgres204 streaming" \
    ws_relay_clients_are "postgres204:streaming:sync"
  note "the relay's /status: its upstream (postgres202) and its clients, in pg_stat_replication's terms"
  ws_show_relay
  note "ok: the relay lists postgres204 (sync: named in its --synchronous-standby-names)"

  say "synchronous_standby_names = 'relay' on postgres202: a commit there now waits until postgres204, behind the relay, has flushed it"
  ws_show postgres202 "ALTER SYSTEM SET synchronous_standby_names = 'relay'"
  ws_sql postgres202 "SELECT pg_reload_conf()" >/dev/null
  ws_wait postgres202 60 "the relay sync" ws_replication_is "relay:streaming:sync walstream:streaming:async"
  ws_show postgres202 "$WS_REPLICATION"
  if ! timeout 60 docker exec -i "$(ws_cid postgres202)" psql -X -q -v ON_ERROR_STOP=1 -U postgres \
    -c "INSERT INTO tutorial (id, note) VALUES (5, 'confirmed by postgres204, through the relay')"; then
    ws_fail "a commit with the relay as the synchronous standby did not complete" relay postgres204 postgres202
  fi
  note "ok: the INSERT returned"
  ws_wait postgres204 60 "row 5 replayed on postgres204" \
    ws_sql_is postgres204 1 "SELECT count(*) FROM tutorial WHERE id = 5"
  ws_show postgres204 "SELECT id, note FROM tutorial ORDER BY id"

  say "Stop postgres204: the relay still streams from postgres202, but a commit there waits for the standby behind it"
  run_compose stop postgres204
  ws_wait relay 60 "the relay has no client left" ws_relay_clients_are ""
  note "\$ docker-compose -f docker/compose.yaml exec postgres202 psql -U postgres -c \"INSERT ... (6, 'waited for postgres204')\" &"
  docker exec -i "$(ws_cid postgres202)" psql -X -q -v ON_ERROR_STOP=1 -U postgres \
    -c "INSERT INTO tutorial (id, note) VALUES (6, 'waited for postgres204, behind the relay')" &
  local waiting=$!
  ws_wait postgres202 60 "the commit waits (wait_event SyncRep)" \
    ws_sql_is postgres202 1 "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
  sleep "$WS_HOLD_SECONDS"
  kill -0 "$waiting" 2>/dev/null || ws_fail "the commit returned with postgres204 stopped" relay postgres202
  note "ok: after ${WS_HOLD_SECONDS}s the INSERT has still not returned"
  ws_expect postgres202 "the relay is still connected to postgres202" \
    "$(ws_sql postgres202 "SELECT state FROM pg_stat_replication WHERE application_name = 'relay'")" streaming
  note "the relay has the commit's WAL (its flush_lsn below) but confirms nothing without postgres204, so postgres202 lists it with no flush position, as async:"
  ws_show postgres202 "$WS_REPLICATION"
  ws_show_relay

  say "Start postgres204 again: it streams from the relay again, and the waiting commit returns"
  run_compose start postgres204
  local deadline=$((SECONDS + 60))
  while kill -0 "$waiting" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || ws_fail "the waiting commit did not return after postgres204 restarted" relay postgres204 postgres202
    ws_running postgres204 || ws_fail "postgres204 stopped after its restart" postgres204
    sleep 0.5
  done
  wait "$waiting" || ws_fail "the waiting INSERT failed" postgres202
  note "ok: the INSERT returned"
  ws_wait postgres204 60 "row 6 replayed on postgres204" \
    ws_sql_is postgres204 1 "SELECT count(*) FROM tutorial WHERE id = 6"
  ws_show postgres204 "SELECT id, note FROM tutorial ORDER BY id"
  ws_wait postgres202 60 "the relay sync" ws_replication_is "relay:streaming:sync walstream:streaming:async"
  ws_show postgres202 "$WS_REPLICATION"
  ws_show_relay
}
