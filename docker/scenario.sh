# The tutorial's steps, shared by docker/walkthrough.sh (a person watches) and
# docker/test.sh (CI): each step says what it shows, shows it, and checks it,
# failing with the concerned service's logs. Sourced after lib.sh.
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

ws_scenario() {
  say "Start the topology: postgres202 (primary), postgres203 (standby), walstream (receiver); replication is asynchronous"
  run_compose up -d
  ws_wait postgres202 120 "postgres202 accepts connections" ws_sql postgres202 "SELECT 1"
  ws_wait postgres203 120 "postgres203 accepts read-only connections" ws_sql postgres203 "SELECT 1"
  note "postgres203 was made with pg_basebackup from postgres202; its log shows the progress:"
  ws_compose logs --no-color postgres203 | grep -E 'pg_basebackup|kB \(' | sed 's/^/   /'
  ws_expect postgres203 "postgres203 is in recovery" "$(ws_sql postgres203 'SELECT pg_is_in_recovery()')" t

  say "pg_stat_replication on postgres202: both standbys stream, both async"
  ws_wait walstream 60 "postgres203 and walstream streaming" \
    ws_replication_is "postgres203:streaming:async walstream:streaming:async"
  ws_show postgres202 "$WS_REPLICATION"
  note "walstream's command line: the replica role's password came from PGPASSWORD, not an argument"
  docker top "$(ws_cid walstream)" -o pid,args | sed 's/^/   /'
  local svc
  for svc in "${WS_SERVICES[@]}"; do
    if docker top "$(ws_cid "$svc")" -o pid,args | grep -qi password; then
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

  say "synchronous_standby_names = 'FIRST 1 (postgres203, walstream)': postgres203 is sync, walstream potential"
  ws_show postgres202 "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (postgres203, walstream)'"
  ws_sql postgres202 "SELECT pg_reload_conf()" >/dev/null
  ws_wait postgres202 60 "postgres203 sync, walstream potential" \
    ws_replication_is "postgres203:streaming:sync walstream:streaming:potential"
  ws_show postgres202 "$WS_REPLICATION"
  ws_show postgres202 "INSERT INTO tutorial (id, note) VALUES (2, 'confirmed by postgres203')"

  say "Stop postgres203: walstream takes over as the synchronous standby, commits still complete"
  run_compose stop postgres203
  ws_wait walstream 60 "walstream sync alone" ws_replication_is "walstream:streaming:sync"
  ws_show postgres202 "$WS_REPLICATION"
  # A commit that waited would hang here: a bound turns that into a failure.
  if ! timeout 60 docker exec -i "$(ws_cid postgres202)" psql -X -q -v ON_ERROR_STOP=1 -U postgres \
    -c "INSERT INTO tutorial (id, note) VALUES (3, 'confirmed by walstream')"; then
    ws_fail "a commit with walstream as the synchronous standby did not complete" walstream postgres202
  fi
  ws_show postgres202 "SELECT id, note FROM tutorial ORDER BY id"

  say "Stop walstream too: no standby can confirm, so a commit waits"
  run_compose stop walstream
  ws_wait postgres202 60 "no walsender left" ws_replication_is ""
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
  ws_wait walstream 60 "walstream sync" ws_replication_is "walstream:streaming:sync"
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
}
