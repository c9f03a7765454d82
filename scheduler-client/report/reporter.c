/* scheduler-client/report/reporter.c - the reporter thread (see report.h). */
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "scheduler-client/backoff.h"
#include "scheduler-client/report/report.h"
#include "scheduler-client/report/schema.h"

#define MAX_PARAMS 32

GQuark vn_report_error_quark(void)
{
    return g_quark_from_static_string("vn-report-error");
}

/* ------------------------------------------------------------------ rows */

void vn_capacity_free(VnCapacity *c)
{
    if (!c)
        return;
    g_free(c->host);
    g_free(c->hypervisor_type);
    g_free(c->hypervisor_hostname);
    g_free(c->cpu_info);
    g_free(c->stats);
    g_free(c);
}

gboolean vn_capacity_equal(const VnCapacity *a, const VnCapacity *b)
{
    if (!a || !b)
        return a == b;
    return g_strcmp0(a->host, b->host) == 0 &&
           g_strcmp0(a->hypervisor_type, b->hypervisor_type) == 0 &&
           a->hypervisor_version == b->hypervisor_version &&
           g_strcmp0(a->hypervisor_hostname, b->hypervisor_hostname) == 0 &&
           g_strcmp0(a->cpu_info, b->cpu_info) == 0 && a->vcpus == b->vcpus &&
           a->vcpus_used == b->vcpus_used && a->memory_mb == b->memory_mb &&
           a->memory_mb_used == b->memory_mb_used && a->free_ram_mb == b->free_ram_mb &&
           a->local_gb == b->local_gb && a->local_gb_used == b->local_gb_used &&
           a->free_disk_gb == b->free_disk_gb &&
           a->disk_available_least == b->disk_available_least && a->running_vms == b->running_vms &&
           a->cpu_allocation_ratio == b->cpu_allocation_ratio &&
           a->ram_allocation_ratio == b->ram_allocation_ratio &&
           a->disk_allocation_ratio == b->disk_allocation_ratio &&
           a->reserved_host_memory_mb == b->reserved_host_memory_mb &&
           a->reserved_host_disk_mb == b->reserved_host_disk_mb &&
           a->reserved_host_cpus == b->reserved_host_cpus && g_strcmp0(a->stats, b->stats) == 0;
}

void vn_instance_row_free(VnInstanceRow *r)
{
    if (!r)
        return;
    g_free(r->uuid);
    g_free(r->host);
    g_free(r->name);
    g_free(r->project_id);
    g_free(r->user_id);
    g_free(r->vm_state);
    g_free(r->task_state);
    g_free(r->flavor);
    g_free(r->image);
    g_free(r->fault);
    g_free(r);
}

void vn_action_row_free(VnActionRow *r)
{
    if (!r)
        return;
    g_free(r->journal_id);
    g_free(r->instance_uuid);
    g_free(r->request_id);
    g_free(r->action);
    g_free(r->result);
    g_free(r->message);
    g_free(r);
}

void vn_migration_row_free(VnMigrationRow *r)
{
    if (!r)
        return;
    g_free(r->id);
    g_free(r->instance_uuid);
    g_free(r->source_host);
    g_free(r->dest_host);
    g_free(r->status);
    g_free(r->error_message);
    g_free(r);
}

VnMigrationRow *vn_migration_row_copy(const VnMigrationRow *s)
{
    VnMigrationRow *r = g_new0(VnMigrationRow, 1);

    *r = *s;
    r->id = g_strdup(s->id);
    r->instance_uuid = g_strdup(s->instance_uuid);
    r->source_host = g_strdup(s->source_host);
    r->dest_host = g_strdup(s->dest_host);
    r->status = g_strdup(s->status);
    r->error_message = g_strdup(s->error_message);
    return r;
}

/* ------------------------------------------------------------------ statement params */

typedef struct {
    const char *v[MAX_PARAMS];
    GPtrArray *owned;
    int n;
} Params;

static void p_init(Params *p)
{
    memset(p, 0, sizeof(*p));
    p->owned = g_ptr_array_new_with_free_func(g_free);
}

static void p_clear(Params *p)
{
    g_ptr_array_unref(p->owned);
}

static void p_str(Params *p, const char *s)
{
    g_assert(p->n < MAX_PARAMS);
    p->v[p->n++] = s;
}

static void p_own(Params *p, char *s)
{
    g_ptr_array_add(p->owned, s);
    p_str(p, s);
}

static void p_int(Params *p, gint64 v)
{
    p_own(p, g_strdup_printf("%" G_GINT64_FORMAT, v));
}

static void p_dbl(Params *p, double v)
{
    char buf[G_ASCII_DTOSTR_BUF_SIZE];

    p_own(p, g_strdup(g_ascii_dtostr(buf, sizeof(buf), v)));
}

static void p_time(Params *p, gint64 unix_s)
{
    if (unix_s > 0)
        p_int(p, unix_s);
    else
        p_str(p, NULL);
}

/* ------------------------------------------------------------------ reporter */

struct _VnReporter {
    char *conninfo;
    char *password;
    int connect_timeout;
    char *host;
    char *binary;
    char *topic;
    char *version;
    int debounce_ms;
    gboolean write_unchanged;
    VnReporterHooks hooks;

    GThread *thread;
    GMutex lock;
    GCond cond;
    gboolean stop;
    int report_interval;
    int heartbeat_interval;
    gboolean capacity_dirty;
    gint64 capacity_due;
    gboolean actions_pending;
    GHashTable *instances;  /* uuid -> VnInstanceRow* */
    gint64 instances_due;   /* monotonic time the rows waiting in @instances go */
    gint64 actions_due;     /* monotonic time the actions pending go */
    GHashTable *migrations; /* id -> VnMigrationRow* */
    gboolean idle;          /* nothing waits to be written */
    VnReporterStats stats;
    gboolean disabled; /* the service row's disabled and its reason */
    char *disabled_reason;
    gint64 probe_us;        /* monotonic time the last command-path probe came back (0: none) */
    gboolean service_dirty; /* written at the next round, not the next heartbeat */

    /* reporter thread only */
    PGconn *conn;
    VnCapacity *written;
    gint64 next_heartbeat;
    gint64 next_report;
    VnBackoff backoff;
    gint64 next_connect;
    gboolean outage;
};

/* $7: seconds since the last command-path probe came back, NULL when none did since the
 * start (the row keeps its last value); an age, not a time, so that the agent's clock
 * never enters the row: the database's now() stamps both columns. */
static const char *const sql_heartbeat =
    "INSERT INTO services (host, \"binary\", topic, version, report_count, last_seen_up, "
    "disabled, disabled_reason, last_probe_at) "
    "VALUES ($1, $2, $3, $4, 1, now(), $5::boolean, $6,"
    " now() - make_interval(secs => $7::double precision))"
    " ON CONFLICT (host, \"binary\") DO UPDATE "
    "SET report_count = services.report_count + 1, last_seen_up = now(), "
    "topic = EXCLUDED.topic, version = EXCLUDED.version, disabled = EXCLUDED.disabled, "
    "disabled_reason = EXCLUDED.disabled_reason, "
    "last_probe_at = coalesce(EXCLUDED.last_probe_at, services.last_probe_at), updated_at = now()";

static const char *const sql_capacity =
    "INSERT INTO compute_nodes (host, hypervisor_type, hypervisor_version, hypervisor_hostname,"
    " cpu_info, vcpus, vcpus_used, memory_mb, memory_mb_used, free_ram_mb, local_gb,"
    " local_gb_used, free_disk_gb, disk_available_least, running_vms, cpu_allocation_ratio,"
    " ram_allocation_ratio, disk_allocation_ratio, reserved_host_memory_mb,"
    " reserved_host_disk_mb, reserved_host_cpus, stats) VALUES ($1, $2, $3, $4, $5::jsonb,"
    " $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22::jsonb)"
    " ON CONFLICT (host) DO UPDATE SET hypervisor_type = EXCLUDED.hypervisor_type,"
    " hypervisor_version = EXCLUDED.hypervisor_version,"
    " hypervisor_hostname = EXCLUDED.hypervisor_hostname, cpu_info = EXCLUDED.cpu_info,"
    " vcpus = EXCLUDED.vcpus, vcpus_used = EXCLUDED.vcpus_used,"
    " memory_mb = EXCLUDED.memory_mb, memory_mb_used = EXCLUDED.memory_mb_used,"
    " free_ram_mb = EXCLUDED.free_ram_mb, local_gb = EXCLUDED.local_gb,"
    " local_gb_used = EXCLUDED.local_gb_used, free_disk_gb = EXCLUDED.free_disk_gb,"
    " disk_available_least = EXCLUDED.disk_available_least,"
    " running_vms = EXCLUDED.running_vms,"
    " cpu_allocation_ratio = EXCLUDED.cpu_allocation_ratio,"
    " ram_allocation_ratio = EXCLUDED.ram_allocation_ratio,"
    " disk_allocation_ratio = EXCLUDED.disk_allocation_ratio,"
    " reserved_host_memory_mb = EXCLUDED.reserved_host_memory_mb,"
    " reserved_host_disk_mb = EXCLUDED.reserved_host_disk_mb,"
    " reserved_host_cpus = EXCLUDED.reserved_host_cpus, stats = EXCLUDED.stats,"
    " updated_at = now()";

static const char *const sql_instance =
    "INSERT INTO instances (uuid, host, name, project_id, user_id, vm_state, task_state,"
    " power_state, flavor, image, fault, launched_at, terminated_at, generation) VALUES"
    " ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11,"
    " to_timestamp($12::double precision), to_timestamp($13::double precision), $14)"
    " ON CONFLICT (uuid) DO UPDATE SET"
    " host = EXCLUDED.host, name = EXCLUDED.name, project_id = EXCLUDED.project_id,"
    " user_id = EXCLUDED.user_id, vm_state = EXCLUDED.vm_state,"
    " task_state = EXCLUDED.task_state, power_state = EXCLUDED.power_state,"
    " flavor = EXCLUDED.flavor, image = EXCLUDED.image, fault = EXCLUDED.fault,"
    " launched_at = EXCLUDED.launched_at, terminated_at = EXCLUDED.terminated_at,"
    " generation = EXCLUDED.generation, updated_at = now()"
    " WHERE instances.generation < EXCLUDED.generation"
    /* a host never takes a guest that settled on another host without a task that moves
     * it (a migration, an evacuation): a stale copy's writes are dropped */
    " AND (instances.host IS NOT DISTINCT FROM EXCLUDED.host OR instances.host IS NULL"
    "  OR instances.task_state IS NOT NULL OR EXCLUDED.task_state IS NOT NULL)";

static const char *const sql_action =
    "INSERT INTO instance_actions (host, journal_id, local_id, instance_uuid, request_id,"
    " action, start_time, finish_time, result, message) VALUES ($1, $2::uuid, $3, $4::uuid,"
    " $5, $6, to_timestamp($7::double precision), to_timestamp($8::double precision), $9, $10)"
    " ON CONFLICT (journal_id, local_id) DO UPDATE SET finish_time = EXCLUDED.finish_time,"
    " result = EXCLUDED.result, message = EXCLUDED.message";

static const char *const sql_migration =
    "INSERT INTO migrations (id, instance_uuid, source_host, dest_host, status,"
    " block_migration, memory_total, memory_processed, memory_remaining, disk_total,"
    " disk_processed, disk_remaining, downtime_ms, started_at, finished_at, error_message)"
    " VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
    " to_timestamp($14::double precision), to_timestamp($15::double precision), $16)"
    " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,"
    " memory_total = EXCLUDED.memory_total, memory_processed = EXCLUDED.memory_processed,"
    " memory_remaining = EXCLUDED.memory_remaining, disk_total = EXCLUDED.disk_total,"
    " disk_processed = EXCLUDED.disk_processed, disk_remaining = EXCLUDED.disk_remaining,"
    " downtime_ms = EXCLUDED.downtime_ms, finished_at = EXCLUDED.finished_at,"
    " error_message = EXCLUDED.error_message, updated_at = now()";

static const struct {
    const char *name;
    const char *const *sql;
} statements[] = {
    { "vn_heartbeat", &sql_heartbeat }, { "vn_capacity", &sql_capacity },
    { "vn_instance", &sql_instance },   { "vn_action", &sql_action },
    { "vn_migration", &sql_migration },
};

/* The server's notices (e.g. "relation already exists, skipping") are not worth more than
 * a debug line. */
static void on_notice(void *arg, const char *message)
{
    g_autofree char *m = g_strstrip(g_strdup(message));

    (void)arg;
    g_debug("database: %s", m);
}

static PGconn *open_conn(const char *conninfo, const char *password, int timeout,
                         const char *appname, GError **error)
{
    g_autofree char *t = g_strdup_printf("%d", timeout > 0 ? timeout : 5);
    /* our defaults first: the operator's connection string (dbname, expanded) overrides
     * them; a password from a file comes last */
    const char *keys[] = { "connect_timeout", "application_name",           "keepalives",
                           "keepalives_idle", "keepalives_interval",        "keepalives_count",
                           "dbname",          password ? "password" : NULL, NULL };
    const char *vals[] = { t, appname, "1", "10", "5", "3", conninfo, password, NULL };
    PGconn *conn = PQconnectdbParams(keys, vals, 1);

    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_CONNECT, "connecting to PostgreSQL: %s",
                    conn ? g_strstrip(PQerrorMessage(conn)) : "out of memory");
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, on_notice, NULL);
    return conn;
}

static gboolean exec_ok(PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);

    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

static gboolean prepare_all(PGconn *conn, GError **error)
{
    g_autoptr(PGresult) r = PQexec(conn, "SET statement_timeout = '15s'");

    if (!exec_ok(r)) {
        g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_QUERY, "setting a timeout: %s",
                    g_strstrip(PQresultErrorMessage(r)));
        return FALSE;
    }
    for (gsize i = 0; i < G_N_ELEMENTS(statements); i++) {
        g_autoptr(PGresult) p = PQprepare(conn, statements[i].name, *statements[i].sql, 0, NULL);
        if (!exec_ok(p)) {
            g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_QUERY, "preparing %s: %s",
                        statements[i].name, g_strstrip(PQresultErrorMessage(p)));
            return FALSE;
        }
    }
    return TRUE;
}

/* Runs prepared @name; on failure tells whether the connection is gone. */
static gboolean run_prepared(VnReporter *r, const char *name, Params *p, gboolean *lost,
                             GError **error)
{
    g_autoptr(PGresult) res = PQexecPrepared(r->conn, name, p->n, p->v, NULL, NULL, 0);

    *lost = FALSE;
    if (exec_ok(res)) {
        g_mutex_lock(&r->lock);
        r->stats.writes++;
        g_mutex_unlock(&r->lock);
        return TRUE;
    }
    *lost = PQstatus(r->conn) != CONNECTION_OK;
    g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_QUERY, "%s: %s", name,
                g_strstrip(PQresultErrorMessage(res)));
    return FALSE;
}

static void drop_connection(VnReporter *r, const char *why)
{
    if (!r->outage) {
        g_warning("database: %s; the agent goes on and catches up when it is back", why);
        g_mutex_lock(&r->lock);
        r->stats.outages++;
        g_mutex_unlock(&r->lock);
    }
    r->outage = TRUE;
    PQfinish(r->conn);
    r->conn = NULL;
    g_mutex_lock(&r->lock);
    r->stats.connected = FALSE;
    g_mutex_unlock(&r->lock);
    r->next_connect =
        g_get_monotonic_time() +
        (gint64)(vn_backoff_next(&r->backoff, g_random_double()) * G_TIME_SPAN_SECOND);
}

/* Connects (when due), migrates the schema, prepares statements, schedules a full sync. */
static void try_connect(VnReporter *r)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *app = g_strdup_printf("virtnoded %s", r->host);
    int version = 0;

    if (g_get_monotonic_time() < r->next_connect)
        return;
    r->conn = open_conn(r->conninfo, r->password, r->connect_timeout, app, &err);
    if (r->conn && !vn_schema_migrate(r->conn, &version, &err)) {
        PQfinish(r->conn);
        r->conn = NULL;
    }
    if (r->conn && !prepare_all(r->conn, &err)) {
        PQfinish(r->conn);
        r->conn = NULL;
    }
    if (!r->conn) {
        if (!r->outage) {
            g_warning("database: %s; retrying with back-off", err->message);
            g_mutex_lock(&r->lock);
            r->stats.outages++;
            g_mutex_unlock(&r->lock);
        } else {
            g_debug("database: %s", err->message);
        }
        r->outage = TRUE;
        r->next_connect =
            g_get_monotonic_time() +
            (gint64)(vn_backoff_next(&r->backoff, g_random_double()) * G_TIME_SPAN_SECOND);
        return;
    }
    if (r->outage)
        g_message("database: connected again; writing the current state");
    else
        g_message("database: connected (schema version %d)", version);
    r->outage = FALSE;
    vn_backoff_reset(&r->backoff);
    /* whatever was written before may be stale: write everything again */
    vn_capacity_free(r->written);
    r->written = NULL;
    r->next_heartbeat = 0;
    if (r->hooks.all_instances) {
        g_autoptr(GPtrArray) rows = r->hooks.all_instances(r->hooks.user_data);
        g_mutex_lock(&r->lock);
        for (guint i = 0; rows && i < rows->len; i++) {
            VnInstanceRow *row = g_ptr_array_index(rows, i);
            if (!g_hash_table_contains(r->instances, row->uuid))
                g_hash_table_insert(r->instances, g_strdup(row->uuid), row);
            else
                vn_instance_row_free(row);
            rows->pdata[i] = NULL;
        }
        g_mutex_unlock(&r->lock);
    }
    g_mutex_lock(&r->lock);
    r->actions_pending = TRUE;
    r->capacity_dirty = TRUE;
    r->capacity_due = 0;
    r->stats.connected = TRUE;
    g_mutex_unlock(&r->lock);
}

static gboolean write_heartbeat(VnReporter *r, gboolean *lost, GError **error)
{
    Params p;
    gboolean ok;

    p_init(&p);
    p_str(&p, r->host);
    p_str(&p, r->binary);
    p_str(&p, r->topic);
    p_str(&p, r->version);
    g_mutex_lock(&r->lock);
    p_str(&p, r->disabled ? "true" : "false");
    p_str(&p, r->disabled_reason);
    if (r->probe_us) {
        char age[32];
        g_ascii_dtostr(age, sizeof(age), (g_get_monotonic_time() - r->probe_us) / 1e6);
        p_own(&p, g_strdup(age));
    } else {
        p_str(&p, NULL);
    }
    g_mutex_unlock(&r->lock);
    ok = run_prepared(r, "vn_heartbeat", &p, lost, error);
    p_clear(&p);
    if (ok) {
        g_mutex_lock(&r->lock);
        r->stats.last_heartbeat = g_get_real_time() / G_USEC_PER_SEC;
        g_mutex_unlock(&r->lock);
    }
    return ok;
}

static gboolean write_capacity(VnReporter *r, const VnCapacity *c, gboolean *lost, GError **error)
{
    Params p;
    gboolean ok;

    p_init(&p);
    p_str(&p, c->host);
    p_str(&p, c->hypervisor_type);
    p_int(&p, c->hypervisor_version);
    p_str(&p, c->hypervisor_hostname);
    p_str(&p, c->cpu_info ? c->cpu_info : "{}");
    p_int(&p, c->vcpus);
    p_int(&p, c->vcpus_used);
    p_int(&p, c->memory_mb);
    p_int(&p, c->memory_mb_used);
    p_int(&p, c->free_ram_mb);
    p_int(&p, c->local_gb);
    p_int(&p, c->local_gb_used);
    p_int(&p, c->free_disk_gb);
    p_int(&p, c->disk_available_least);
    p_int(&p, c->running_vms);
    p_dbl(&p, c->cpu_allocation_ratio);
    p_dbl(&p, c->ram_allocation_ratio);
    p_dbl(&p, c->disk_allocation_ratio);
    p_int(&p, c->reserved_host_memory_mb);
    p_int(&p, c->reserved_host_disk_mb);
    p_int(&p, c->reserved_host_cpus);
    p_str(&p, c->stats ? c->stats : "{}");
    ok = run_prepared(r, "vn_capacity", &p, lost, error);
    p_clear(&p);
    return ok;
}

static const char *instance_params(VnReporter *r, gconstpointer data, Params *p_)
{
    const VnInstanceRow *row = data;
    Params *p = p_;

    (void)r;
    p_str(p, row->uuid);
    p_str(p, row->host);
    p_str(p, row->name ? row->name : "");
    p_str(p, row->project_id);
    p_str(p, row->user_id);
    p_str(p, row->vm_state);
    p_str(p, row->task_state);
    p_int(p, row->power_state);
    p_str(p, row->flavor ? row->flavor : "{}");
    p_str(p, row->image ? row->image : "{}");
    p_str(p, row->fault);
    p_time(p, row->launched_at);
    p_time(p, row->terminated_at);
    p_int(p, row->generation);
    return "vn_instance";
}

static const char *action_params(VnReporter *r, gconstpointer data, Params *p)
{
    const VnActionRow *a = data;

    p_str(p, r->host);
    p_str(p, a->journal_id);
    p_int(p, a->local_id);
    p_str(p, a->instance_uuid);
    p_str(p, a->request_id);
    p_str(p, a->action);
    p_time(p, a->start);
    p_time(p, a->finish);
    p_str(p, a->result);
    p_str(p, a->message);
    return "vn_action";
}

static const char *migration_params(VnReporter *r, gconstpointer data, Params *p)
{
    const VnMigrationRow *m = data;

    (void)r;
    p_str(p, m->id);
    p_str(p, m->instance_uuid);
    p_str(p, m->source_host);
    p_str(p, m->dest_host);
    p_str(p, m->status);
    p_str(p, m->block_migration ? "true" : "false");
    p_int(p, m->memory_total);
    p_int(p, m->memory_processed);
    p_int(p, m->memory_remaining);
    p_int(p, m->disk_total);
    p_int(p, m->disk_processed);
    p_int(p, m->disk_remaining);
    if (m->downtime_ms >= 0)
        p_int(p, m->downtime_ms);
    else
        p_str(p, NULL);
    p_time(p, m->started_at);
    p_time(p, m->finished_at);
    p_str(p, m->error_message);
    return "vn_migration";
}

typedef const char *(*RowParams)(VnReporter *r, gconstpointer row, Params *p);

/* Writes one row: its statement on its own. */
static gboolean write_row(VnReporter *r, RowParams params, gconstpointer row, gboolean *lost,
                          GError **error)
{
    Params p;

    p_init(&p);
    const char *name = params(r, row, &p);
    gboolean ok = run_prepared(r, name, &p, lost, error);
    p_clear(&p);
    return ok;
}

#define PIPELINE_ROWS 64

/* Instance rows and actions wait this long for the changes that follow them: a build's
 * steps, or a burst of builds, then go in one pipeline, and each instance's row once, as
 * it is by then. */
#define ROW_GATHER_MS 50

/* Writes @n rows in one libpq pipeline: one round trip and one transaction (the implicit
 * one up to the sync) instead of one each.  TRUE when every row was written; FALSE when
 * the connection was lost (*lost) or any row failed, and then none was: the pipeline's
 * transaction is rolled back, and the caller writes the rows one by one to find the one
 * the database refuses. */
static gboolean write_pipeline(VnReporter *r, RowParams params, gconstpointer *rows, guint n,
                               gboolean *lost)
{
    gboolean ok = TRUE;
    guint sent = 0;

    *lost = FALSE;
    if (!PQenterPipelineMode(r->conn))
        return FALSE;
    for (; sent < n; sent++) {
        Params p;
        p_init(&p);
        const char *name = params(r, rows[sent], &p);
        int queued = PQsendQueryPrepared(r->conn, name, p.n, p.v, NULL, NULL, 0);
        p_clear(&p);
        if (!queued)
            break;
    }
    /* the sync ends the pipeline's transaction, whatever was queued */
    ok = sent == n;
    if (PQpipelineSync(r->conn)) {
        /* one result (then NULL) per statement queued, then the sync's */
        for (guint i = 0; i < sent; i++) {
            PGresult *res = PQgetResult(r->conn);
            if (!res) {
                ok = FALSE;
                break;
            }
            ok = ok && exec_ok(res);
            PQclear(res);
            while ((res = PQgetResult(r->conn)))
                PQclear(res);
        }
        PGresult *res;
        while ((res = PQgetResult(r->conn))) {
            gboolean sync = PQresultStatus(res) == PGRES_PIPELINE_SYNC;
            PQclear(res);
            if (sync)
                break;
        }
    } else {
        ok = FALSE;
    }
    if (!PQexitPipelineMode(r->conn) || PQstatus(r->conn) != CONNECTION_OK) {
        /* gone, or in a state nothing else here can use: a new connection takes over */
        *lost = TRUE;
        return FALSE;
    }
    if (ok) {
        g_mutex_lock(&r->lock);
        r->stats.writes += n;
        g_mutex_unlock(&r->lock);
    }
    return ok;
}

/* Names a row in the log line that drops it. */
typedef char *(*RowLabel)(gconstpointer row);

/* Writes @n rows in pipelines of up to PIPELINE_ROWS; a pipeline with a refused row is
 * written again row by row, and the row the database refuses is logged and dropped.
 * Sets settled[i] for each row written or dropped; FALSE when the connection was lost
 * (the rows not settled are to be written again). */
static gboolean write_rows(VnReporter *r, RowParams params, RowLabel label, gconstpointer *rows,
                           guint n, gboolean *settled)
{
    gboolean lost = FALSE;

    for (guint at = 0; !lost && at < n; at += PIPELINE_ROWS) {
        guint len = MIN(PIPELINE_ROWS, n - at);
        if (len > 1 && write_pipeline(r, params, rows + at, len, &lost)) {
            for (guint i = at; i < at + len; i++)
                settled[i] = TRUE;
            continue;
        }
        for (guint i = at; i < at + len && !lost; i++) {
            g_autoptr(GError) err = NULL;
            if (!write_row(r, params, rows[i], &lost, &err) && !lost) {
                /* the database refused this row: log it and move on */
                g_autofree char *what = label(rows[i]);
                g_warning("database: dropping %s: %s", what, err->message);
            }
            settled[i] = !lost;
        }
    }
    return !lost;
}

static char *instance_label(gconstpointer row)
{
    return g_strdup_printf("an update of %s", ((const VnInstanceRow *)row)->uuid);
}

static char *migration_label(gconstpointer row)
{
    return g_strdup_printf("an update of %s", ((const VnMigrationRow *)row)->id);
}

static char *action_label(gconstpointer row)
{
    return g_strdup_printf("action %" G_GINT64_FORMAT, ((const VnActionRow *)row)->local_id);
}

/* Writes the rows waiting in @table; keeps those not written (unless a newer one arrived
 * meanwhile).  FALSE when the connection was lost. */
static gboolean write_table(VnReporter *r, GHashTable **table, GDestroyNotify free_row,
                            RowParams params, RowLabel label)
{
    GHashTable *batch;
    GHashTableIter it;
    gpointer k, v;
    gboolean ok;

    g_mutex_lock(&r->lock);
    if (g_hash_table_size(*table) == 0) {
        g_mutex_unlock(&r->lock);
        return TRUE;
    }
    batch = *table;
    *table = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, free_row);
    g_mutex_unlock(&r->lock);

    guint len;
    g_autofree gpointer *keys = g_hash_table_get_keys_as_array(batch, &len);
    g_autofree gconstpointer *rows = g_new(gconstpointer, len);
    g_autofree gboolean *settled = g_new0(gboolean, len);
    for (guint i = 0; i < len; i++)
        rows[i] = g_hash_table_lookup(batch, keys[i]);
    ok = write_rows(r, params, label, rows, len, settled);
    for (guint i = 0; i < len; i++) {
        if (settled[i])
            g_hash_table_remove(batch, keys[i]);
    }
    /* what was not written goes back, unless something newer replaced it meanwhile */
    g_mutex_lock(&r->lock);
    g_hash_table_iter_init(&it, batch);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        if (!g_hash_table_contains(*table, k)) {
            g_hash_table_iter_steal(&it);
            g_hash_table_insert(*table, k, v);
        }
    }
    g_mutex_unlock(&r->lock);
    g_hash_table_destroy(batch);
    return ok;
}

static gboolean write_actions(VnReporter *r)
{
    g_autoptr(GPtrArray) rows = NULL;
    g_autoptr(GPtrArray) done = g_ptr_array_new();
    gboolean ok;

    g_mutex_lock(&r->lock);
    gboolean pending = r->actions_pending;
    r->actions_pending = FALSE;
    g_mutex_unlock(&r->lock);
    if (!pending || !r->hooks.pending_actions)
        return TRUE;
    rows = r->hooks.pending_actions(r->hooks.user_data);
    if (!rows)
        return TRUE;
    g_autofree gboolean *settled = g_new0(gboolean, rows->len + 1);
    ok = write_rows(r, action_params, action_label, (gconstpointer *)rows->pdata, rows->len,
                    settled);
    for (guint i = 0; i < rows->len; i++) {
        if (settled[i])
            g_ptr_array_add(done, g_ptr_array_index(rows, i));
    }
    if (done->len && r->hooks.actions_written)
        r->hooks.actions_written(done, r->hooks.user_data);
    if (!ok) {
        g_mutex_lock(&r->lock);
        r->actions_pending = TRUE;
        g_mutex_unlock(&r->lock);
    }
    return ok;
}

/* One round of due work; FALSE when the connection was lost. */
static gboolean work(VnReporter *r)
{
    gint64 now = g_get_monotonic_time();
    g_autoptr(GError) err = NULL;
    gboolean lost = FALSE;

    g_mutex_lock(&r->lock);
    gint64 hb_every = (gint64)r->heartbeat_interval * G_TIME_SPAN_SECOND;
    gint64 rep_every = (gint64)r->report_interval * G_TIME_SPAN_SECOND;
    gboolean capacity_now = (r->capacity_dirty && now >= r->capacity_due) || now >= r->next_report;
    if (capacity_now)
        r->capacity_dirty = FALSE;
    if (r->service_dirty) {
        r->service_dirty = FALSE;
        r->next_heartbeat = 0; /* the service row's new state goes now */
    }
    g_mutex_unlock(&r->lock);

    if (now >= r->next_heartbeat) {
        if (!write_heartbeat(r, &lost, &err) && lost)
            return FALSE;
        if (err)
            g_warning("database: heartbeat: %s", err->message);
        g_clear_error(&err);
        r->next_heartbeat = now + hb_every;
    }
    if (capacity_now && r->hooks.capacity) {
        g_autoptr(VnCapacity) c = r->hooks.capacity(r->hooks.user_data);
        r->next_report = now + rep_every;
        if (c && (r->write_unchanged || !vn_capacity_equal(c, r->written))) {
            if (!write_capacity(r, c, &lost, &err)) {
                g_mutex_lock(&r->lock);
                r->capacity_dirty = TRUE;
                g_mutex_unlock(&r->lock);
                if (lost)
                    return FALSE;
                g_warning("database: capacity: %s", err->message);
            } else {
                vn_capacity_free(r->written);
                r->written = g_steal_pointer(&c);
            }
        }
    }
    if (!write_table(r, &r->instances, (GDestroyNotify)vn_instance_row_free, instance_params,
                     instance_label) ||
        !write_table(r, &r->migrations, (GDestroyNotify)vn_migration_row_free, migration_params,
                     migration_label) ||
        !write_actions(r))
        return FALSE;
    return TRUE;
}

/* Monotonic time of the next thing due (called with the lock held). */
static gint64 next_due_locked(VnReporter *r)
{
    gint64 next = r->service_dirty ? 0 : MIN(r->next_heartbeat, r->next_report);

    /* without a connection nothing but the next attempt is due: the heartbeat and rows
     * that fell due meanwhile wait for it (else the thread spins until then) */
    if (!r->conn)
        return r->next_connect;
    if (r->capacity_dirty)
        next = MIN(next, r->capacity_due);
    if (g_hash_table_size(r->instances))
        next = MIN(next, r->instances_due);
    if (r->actions_pending)
        next = MIN(next, r->actions_due);
    if (g_hash_table_size(r->migrations))
        next = 0;
    return next;
}

static gpointer reporter_thread(gpointer data)
{
    VnReporter *r = data;

    for (;;) {
        g_mutex_lock(&r->lock);
        if (r->stop) {
            g_mutex_unlock(&r->lock);
            break;
        }
        gint64 due = next_due_locked(r);
        r->idle = r->conn && due > g_get_monotonic_time() && !r->capacity_dirty &&
                  g_hash_table_size(r->instances) == 0 && !r->actions_pending;
        g_cond_broadcast(&r->cond);
        if (due > g_get_monotonic_time())
            g_cond_wait_until(&r->cond, &r->lock, due);
        gboolean stop = r->stop;
        r->stats.pending_instances = g_hash_table_size(r->instances);
        g_mutex_unlock(&r->lock);
        if (stop)
            break;
        if (!r->conn) {
            try_connect(r);
            continue;
        }
        if (!work(r))
            drop_connection(r, "connection lost");
    }
    return NULL;
}

VnReporter *vn_reporter_new(const VnReporterConfig *cfg, const VnReporterHooks *hooks,
                            GError **error)
{
    VnReporter *r;

    if (!vn_report_conninfo_check(cfg->connection, error))
        return NULL;
    r = g_new0(VnReporter, 1);
    r->conninfo = g_strdup(cfg->connection);
    r->password = g_strdup(cfg->password);
    r->connect_timeout = cfg->connect_timeout;
    r->host = g_strdup(cfg->host);
    r->binary = g_strdup(cfg->binary ? cfg->binary : "virtnode-compute");
    r->topic = g_strdup(cfg->topic ? cfg->topic : "compute");
    r->version = g_strdup(cfg->version ? cfg->version : "0");
    r->debounce_ms = cfg->debounce_ms > 0 ? cfg->debounce_ms : 200;
    r->write_unchanged = cfg->write_unchanged;
    r->report_interval = MAX(cfg->report_interval, 1);
    r->heartbeat_interval = MAX(cfg->heartbeat_interval, 1);
    if (hooks)
        r->hooks = *hooks;
    g_mutex_init(&r->lock);
    g_cond_init(&r->cond);
    r->instances = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                         (GDestroyNotify)vn_instance_row_free);
    r->migrations = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          (GDestroyNotify)vn_migration_row_free);
    vn_backoff_init(&r->backoff, MAX(cfg->retry_min, 1), MAX(cfg->retry_max, cfg->retry_min));
    return r;
}

void vn_reporter_start(VnReporter *r)
{
    if (!r->thread)
        r->thread = g_thread_new("db-reporter", reporter_thread, r);
}

void vn_reporter_set_intervals(VnReporter *r, int report_interval, int heartbeat_interval)
{
    g_mutex_lock(&r->lock);
    r->report_interval = MAX(report_interval, 1);
    r->heartbeat_interval = MAX(heartbeat_interval, 1);
    g_cond_broadcast(&r->cond);
    g_mutex_unlock(&r->lock);
}

void vn_reporter_set_service_state(VnReporter *r, gboolean disabled, const char *reason)
{
    g_mutex_lock(&r->lock);
    r->disabled = disabled;
    g_free(r->disabled_reason);
    r->disabled_reason = disabled && reason ? g_strdup(reason) : NULL;
    r->service_dirty = TRUE;
    r->idle = FALSE;
    g_cond_broadcast(&r->cond);
    g_mutex_unlock(&r->lock);
}

void vn_reporter_probe_returned(VnReporter *r)
{
    g_mutex_lock(&r->lock);
    r->probe_us = g_get_monotonic_time();
    g_mutex_unlock(&r->lock);
}

void vn_reporter_capacity_changed(VnReporter *r)
{
    g_mutex_lock(&r->lock);
    if (!r->capacity_dirty) {
        r->capacity_dirty = TRUE;
        r->capacity_due = g_get_monotonic_time() + (gint64)r->debounce_ms * 1000;
        g_cond_broadcast(&r->cond);
    }
    r->idle = FALSE;
    g_mutex_unlock(&r->lock);
}

void vn_reporter_instance(VnReporter *r, VnInstanceRow *row)
{
    g_mutex_lock(&r->lock);
    VnInstanceRow *waiting = g_hash_table_lookup(r->instances, row->uuid);
    if (waiting && waiting->generation > row->generation) {
        /* a later state got here first: the changes' announcements crossed */
        g_mutex_unlock(&r->lock);
        vn_instance_row_free(row);
        return;
    }
    if (g_hash_table_size(r->instances) == 0) {
        /* the first row of a round: the changes made until it is due go with it */
        r->instances_due = g_get_monotonic_time() + ROW_GATHER_MS * 1000;
        g_cond_broadcast(&r->cond);
    }
    g_hash_table_replace(r->instances, g_strdup(row->uuid), row);
    r->idle = FALSE;
    g_mutex_unlock(&r->lock);
}

void vn_reporter_migration(VnReporter *r, VnMigrationRow *row)
{
    g_mutex_lock(&r->lock);
    g_hash_table_replace(r->migrations, g_strdup(row->id), row);
    r->idle = FALSE;
    g_cond_broadcast(&r->cond);
    g_mutex_unlock(&r->lock);
}

void vn_reporter_actions_pending(VnReporter *r)
{
    g_mutex_lock(&r->lock);
    if (!r->actions_pending) {
        r->actions_pending = TRUE;
        r->actions_due = g_get_monotonic_time() + ROW_GATHER_MS * 1000;
        g_cond_broadcast(&r->cond);
    }
    r->idle = FALSE;
    g_mutex_unlock(&r->lock);
}

gboolean vn_reporter_flush(VnReporter *r, double timeout_s)
{
    gint64 end = g_get_monotonic_time() + (gint64)(timeout_s * G_TIME_SPAN_SECOND);
    gboolean idle;

    g_mutex_lock(&r->lock);
    g_cond_broadcast(&r->cond);
    while (!r->idle && r->thread) {
        if (!g_cond_wait_until(&r->cond, &r->lock, end))
            break;
    }
    idle = r->idle;
    g_mutex_unlock(&r->lock);
    return idle;
}

void vn_reporter_get_stats(VnReporter *r, VnReporterStats *out)
{
    g_mutex_lock(&r->lock);
    *out = r->stats;
    out->pending_instances = g_hash_table_size(r->instances);
    g_mutex_unlock(&r->lock);
}

void vn_reporter_free(VnReporter *r)
{
    if (!r)
        return;
    g_mutex_lock(&r->lock);
    r->stop = TRUE;
    g_cond_broadcast(&r->cond);
    g_mutex_unlock(&r->lock);
    if (r->thread)
        g_thread_join(r->thread);
    PQfinish(r->conn);
    vn_capacity_free(r->written);
    g_hash_table_destroy(r->instances);
    g_hash_table_destroy(r->migrations);
    g_mutex_clear(&r->lock);
    g_cond_clear(&r->cond);
    g_free(r->conninfo);
    g_free(r->disabled_reason);
    if (r->password)
        memset(r->password, 0, strlen(r->password));
    g_free(r->password);
    g_free(r->host);
    g_free(r->binary);
    g_free(r->topic);
    g_free(r->version);
    g_free(r);
}

gboolean vn_report_conninfo_check(const char *value, GError **error)
{
    char *msg = NULL;
    PQconninfoOption *opts;

    if (!value || !*value)
        return TRUE; /* empty: reporting disabled */
    opts = PQconninfoParse(value, &msg);
    if (!opts) {
        g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_CONFIG,
                    "not a PostgreSQL connection string: %s",
                    msg ? g_strstrip(msg) : "out of memory");
        PQfreemem(msg);
        return FALSE;
    }
    PQconninfoFree(opts);
    return TRUE;
}

/* virtnodectl's reads: @sql with one parameter, one text column; NULL with @error when
 * the query fails or finds no row (@what names the object in both messages). */
static char *query_text(const char *connection, const char *password, const char *sql,
                        const char *param, const char *what, GError **error)
{
    g_autoptr(PGconn) conn = open_conn(connection, password, 5, "virtnodectl", error);
    g_autoptr(PGresult) res = NULL;
    const char *params[] = { param };

    if (!conn)
        return NULL;
    res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_QUERY, "reading %s: %s", what,
                    g_strstrip(PQresultErrorMessage(res)));
        return NULL;
    }
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_QUERY, "the database has no %s", what);
        return NULL;
    }
    return g_strdup(PQgetvalue(res, 0, 0));
}

char *vn_report_query_host(const char *connection, const char *password, const char *host,
                           GError **error)
{
    g_autofree char *what = g_strdup_printf("host '%s'", host);

    return query_text(
        connection, password,
        "SELECT json_build_object("
        " 'host', $1::text,"
        " 'service', (SELECT row_to_json(s) FROM (SELECT \"binary\", topic, version, report_count,"
        "   disabled, disabled_reason, last_seen_up, last_probe_at,"
        "   extract(epoch FROM now() - last_seen_up)::double precision AS heartbeat_age_s,"
        "   extract(epoch FROM now() - last_probe_at)::double precision AS probe_age_s"
        "   FROM services WHERE host = $1) s),"
        " 'capacity', (SELECT row_to_json(c) FROM compute_nodes c WHERE c.host = $1),"
        " 'instances', (SELECT count(*) FROM instances i WHERE i.host = $1 AND"
        "   i.vm_state <> 'deleted'))::text",
        host, what, error);
}

char *vn_report_query_instance_host(const char *connection, const char *password, const char *uuid,
                                    GError **error)
{
    g_autofree char *what = g_strdup_printf("host for instance %s", uuid);

    return query_text(connection, password,
                      "SELECT host FROM instances WHERE uuid = $1::uuid AND host IS NOT NULL", uuid,
                      what, error);
}

char **vn_report_query_moved(const char *connection, const char *password, const char *host,
                             const char *const *uuids, GError **error)
{
    g_autoptr(PGconn) conn = NULL;
    g_autoptr(PGresult) res = NULL;
    g_autoptr(GString) array = g_string_new("{");
    g_autoptr(GPtrArray) out = g_ptr_array_new();
    const char *params[2];

    for (const char *const *u = uuids; u && *u; u++)
        g_string_append_printf(array, "%s%s", u == uuids ? "" : ",", *u);
    g_string_append_c(array, '}');
    conn = open_conn(connection, password, 5, "virtnode", error);
    if (!conn)
        return NULL;
    params[0] = host;
    params[1] = array->str;
    /* settled elsewhere: a row still in a task (an evacuation under way) or in error (one
     * that failed) does not count */
    res = PQexecParams(conn,
                       "SELECT uuid::text FROM instances WHERE uuid = ANY($2::uuid[])"
                       " AND host IS NOT NULL AND host <> $1 AND task_state IS NULL"
                       " AND vm_state <> 'error'",
                       2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        g_set_error(error, VN_REPORT_ERROR, VN_REPORT_ERROR_QUERY, "reading instance hosts: %s",
                    g_strstrip(PQresultErrorMessage(res)));
        return NULL;
    }
    for (int i = 0; i < PQntuples(res); i++)
        g_ptr_array_add(out, g_strdup(PQgetvalue(res, i, 0)));
    g_ptr_array_add(out, NULL);
    return (char **)g_ptr_array_free(g_steal_pointer(&out), FALSE);
}

char *vn_report_query_instance(const char *connection, const char *password, const char *uuid,
                               GError **error)
{
    g_autofree char *what = g_strdup_printf("instance %s", uuid);

    return query_text(connection, password,
                      "SELECT json_build_object('uuid', uuid, 'name', name, 'project_id',"
                      " project_id, 'user_id', user_id, 'host', host, 'vm_state', vm_state,"
                      " 'flavor', flavor, 'image', image)::text FROM instances"
                      " WHERE uuid = $1::uuid",
                      uuid, what, error);
}

char **vn_reporter_query_moved(VnReporter *r, const char *const *uuids, GError **error)
{
    /* conninfo, password and host are set at creation and never change */
    return vn_report_query_moved(r->conninfo, r->password, r->host, uuids, error);
}

char *vn_report_query_migration(const char *connection, const char *password, const char *uuid,
                                GError **error)
{
    g_autofree char *what = g_strdup_printf("migration of instance %s", uuid);

    return query_text(connection, password,
                      "SELECT row_to_json(m)::text FROM (SELECT id AS migration_id, instance_uuid,"
                      " source_host, dest_host, status, block_migration, memory_total,"
                      " memory_processed, memory_remaining, disk_total, disk_processed,"
                      " disk_remaining, downtime_ms, started_at, finished_at, error_message"
                      " FROM migrations WHERE instance_uuid = $1::uuid"
                      " ORDER BY started_at DESC LIMIT 1) m",
                      uuid, what, error);
}
