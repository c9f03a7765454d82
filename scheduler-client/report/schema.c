/* scheduler-client/report/schema.c - numbered schema migrations (see schema.h). */
#include <string.h>

#include "scheduler-client/report/report.h"
#include "scheduler-client/report/schema.h"

/* A constant key for pg_advisory_xact_lock: "vnschema" in ASCII. */
#define SCHEMA_LOCK_KEY "7642620339479555429"

static const char *const migrations[] = {
    /* 1: the tables a scheduler reads, as Nova names them */
    "CREATE TABLE services ("
    "  id bigserial PRIMARY KEY,"
    "  host text NOT NULL,"
    "  \"binary\" text NOT NULL,"
    "  topic text NOT NULL,"
    "  version text NOT NULL,"
    "  report_count bigint NOT NULL DEFAULT 0,"
    "  last_seen_up timestamptz,"
    "  disabled boolean NOT NULL DEFAULT false,"
    "  disabled_reason text,"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  updated_at timestamptz NOT NULL DEFAULT now(),"
    "  UNIQUE (host, \"binary\"));"
    "CREATE TABLE compute_nodes ("
    "  host text PRIMARY KEY,"
    "  hypervisor_type text NOT NULL,"
    "  hypervisor_version bigint NOT NULL,"
    "  hypervisor_hostname text NOT NULL,"
    "  cpu_info jsonb NOT NULL,"
    "  vcpus integer NOT NULL,"
    "  vcpus_used integer NOT NULL,"
    "  memory_mb bigint NOT NULL,"
    "  memory_mb_used bigint NOT NULL,"
    "  free_ram_mb bigint NOT NULL,"
    "  local_gb bigint NOT NULL,"
    "  local_gb_used bigint NOT NULL,"
    "  free_disk_gb bigint NOT NULL,"
    "  disk_available_least bigint NOT NULL,"
    "  running_vms integer NOT NULL,"
    "  cpu_allocation_ratio double precision NOT NULL,"
    "  ram_allocation_ratio double precision NOT NULL,"
    "  disk_allocation_ratio double precision NOT NULL,"
    "  reserved_host_memory_mb bigint NOT NULL,"
    "  reserved_host_disk_mb bigint NOT NULL,"
    "  reserved_host_cpus integer NOT NULL,"
    "  stats jsonb NOT NULL,"
    "  updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE instances ("
    "  uuid uuid PRIMARY KEY,"
    "  host text,"
    "  name text NOT NULL,"
    "  project_id text,"
    "  user_id text,"
    "  vm_state text NOT NULL,"
    "  task_state text,"
    "  power_state integer NOT NULL,"
    "  flavor jsonb NOT NULL,"
    "  image jsonb NOT NULL,"
    "  fault text,"
    "  launched_at timestamptz,"
    "  terminated_at timestamptz,"
    "  generation bigint NOT NULL DEFAULT 0,"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX instances_host ON instances (host);"
    "CREATE TABLE instance_actions ("
    "  id bigserial PRIMARY KEY,"
    "  host text NOT NULL,"
    "  journal_id uuid NOT NULL,"
    "  local_id bigint NOT NULL,"
    "  instance_uuid uuid NOT NULL,"
    "  request_id text,"
    "  action text NOT NULL,"
    "  start_time timestamptz NOT NULL,"
    "  finish_time timestamptz,"
    "  result text,"
    "  message text,"
    "  UNIQUE (journal_id, local_id));"
    "CREATE INDEX instance_actions_instance ON instance_actions (instance_uuid);"
    "CREATE TABLE migrations ("
    "  id uuid PRIMARY KEY,"
    "  instance_uuid uuid NOT NULL,"
    "  source_host text NOT NULL,"
    "  dest_host text NOT NULL,"
    "  status text NOT NULL CHECK (status IN ('queued', 'preparing', 'running', 'post-copy',"
    "    'completed', 'failed', 'cancelled', 'error')),"
    "  block_migration boolean NOT NULL DEFAULT false,"
    "  memory_total bigint NOT NULL DEFAULT 0,"
    "  memory_processed bigint NOT NULL DEFAULT 0,"
    "  memory_remaining bigint NOT NULL DEFAULT 0,"
    "  disk_total bigint NOT NULL DEFAULT 0,"
    "  disk_processed bigint NOT NULL DEFAULT 0,"
    "  disk_remaining bigint NOT NULL DEFAULT 0,"
    "  downtime_ms bigint,"
    "  started_at timestamptz NOT NULL DEFAULT now(),"
    "  finished_at timestamptz,"
    "  error_message text,"
    "  updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX migrations_instance ON migrations (instance_uuid);",
    /* 2: the command path's proof, next to the heartbeat (docs/database.md) */
    "ALTER TABLE services ADD COLUMN last_probe_at timestamptz;",
};

int vn_schema_latest(void)
{
    return (int)G_N_ELEMENTS(migrations);
}

const char *vn_schema_sql(int n)
{
    return n >= 1 && n <= vn_schema_latest() ? migrations[n - 1] : NULL;
}

static gboolean run(PGconn *conn, const char *sql, const char *what, GError **error)
{
    g_autoptr(PGresult) r = PQexec(conn, sql);

    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_SCHEMA, "%s: %s", what,
                    g_strstrip(PQresultErrorMessage(r)));
        return FALSE;
    }
    return TRUE;
}

static gboolean migrate_locked(PGconn *conn, int *version, GError **error)
{
    g_autoptr(PGresult) r = NULL;
    int current;

    if (!run(conn,
             "CREATE TABLE IF NOT EXISTS virtnode_schema (version integer PRIMARY KEY,"
             " applied_at timestamptz NOT NULL DEFAULT now())",
             "creating the schema table", error))
        return FALSE;
    r = PQexec(conn, "SELECT coalesce(max(version), 0) FROM virtnode_schema");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_SCHEMA,
                    "reading the schema version: %s", g_strstrip(PQresultErrorMessage(r)));
        return FALSE;
    }
    current = atoi(PQgetvalue(r, 0, 0));
    for (int n = current + 1; n <= vn_schema_latest(); n++) {
        g_autofree char *what = g_strdup_printf("applying schema migration %d", n);
        g_autofree char *mark =
            g_strdup_printf("INSERT INTO virtnode_schema (version) VALUES (%d)", n);
        if (!run(conn, migrations[n - 1], what, error) || !run(conn, mark, what, error))
            return FALSE;
        g_message("database schema migrated to version %d", n);
        current = n;
    }
    *version = current;
    return TRUE;
}

gboolean vn_schema_migrate(PGconn *conn, int *version, GError **error)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(PGresult) now = NULL;

    /* every connect of every agent of a cell lands here, all at once after a database
     * restart: a current schema is read without the lock or any DDL, so those connects do
     * not queue behind one another */
    now = PQexec(conn, "SELECT coalesce(max(version), 0) FROM virtnode_schema");
    if (PQresultStatus(now) == PGRES_TUPLES_OK &&
        atoi(PQgetvalue(now, 0, 0)) >= vn_schema_latest()) {
        *version = atoi(PQgetvalue(now, 0, 0));
        return TRUE;
    }
    if (!run(conn, "BEGIN", "starting the schema transaction", error))
        return FALSE;
    /* one agent migrates; the others wait here and then find the schema current */
    if (!run(conn, "SELECT pg_advisory_xact_lock(" SCHEMA_LOCK_KEY ")", "taking the schema lock",
             &err) ||
        !migrate_locked(conn, version, &err)) {
        /* a failed rollback leaves a broken connection, which the caller drops anyway */
        PQclear(PQexec(conn, "ROLLBACK"));
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    return run(conn, "COMMIT", "committing the schema", error);
}
