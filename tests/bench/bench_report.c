/* tests/bench/bench_report.c - N simulated agents reporting to one PostgreSQL: writes per
 * second and the database's CPU, for virtnode's reporter and for Nova's default write
 * pattern, with the same hosts and the same instance churn, in the same run.
 *
 *   bench_report --dsn CONNINFO [-n 200] [--seconds 120] [--churn 2]
 *
 * Every simulated agent is the agent's own reporting stack: a journal (SQLite), an
 * instance store and a resource tracker whose host facts come from libvirt's
 * test:///default driver, and a reporter with its own connection.  The churn (instance
 * boots and deletes, --churn per second across the fleet) goes through the store and the
 * tracker, as in the agent.  The two patterns:
 *
 *   virtnode  heartbeat every 10 s; capacity written within 200 ms of a change and checked
 *             every 10 s, but only written when it differs from what was written
 *   Nova      heartbeat every 10 s; the full capacity row every 60 s whether it changed or
 *             not, and at once on every claim (the resource tracker's pattern)
 *
 * Instance rows are written on every change in both.  The database's CPU is the run time
 * of the PostgreSQL server's processes over the measured window, from /proc/PID/schedstat
 * (the server must run on this machine).  Measure at least 60 s so that Nova's periodic
 * rows fall in the window. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/state/instance_store.h"
#include "agent/state/journal.h"
#include "agent/state/tracker.h"
#include "api/clilog.h"

static const char *opt_dsn;
static int opt_agents = 200;
static int opt_seconds = 120;
static double opt_churn = 2.0;
static int opt_warmup = 15;
static gboolean opt_json;

static G_NORETURN void die(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "bench_report: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* ------------------------------------------------------------------ database CPU */

static PGconn *db_connect(void)
{
    PGconn *c = PQconnectdb(opt_dsn);

    if (PQstatus(c) != CONNECTION_OK)
        die("connecting to PostgreSQL: %s", PQerrorMessage(c));
    return c;
}

static void db_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);

    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        die("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* The parent of @pid (field 4 of /proc/PID/stat); 0 when it is gone. */
static int parent_of(int pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    g_autofree char *text = NULL;
    char *p;

    if (!g_file_get_contents(path, &text, NULL, NULL) || !(p = strrchr(text, ')')))
        return 0;
    return atoi(p + 4); /* ") S PPID" */
}

/* Nanoseconds @pid has run on a CPU (the scheduler's exact count, not tick samples). */
static guint64 run_ns(int pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/schedstat", pid);
    g_autofree char *text = NULL;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return 0;
    return g_ascii_strtoull(text, NULL, 10);
}

static int postmaster_pid(void)
{
    PGconn *c = db_connect();
    PGresult *r = PQexec(c, "SELECT pg_backend_pid()");
    int backend = atoi(PQgetvalue(r, 0, 0)), pm;

    PQclear(r);
    PQfinish(c);
    pm = parent_of(backend);
    if (!pm)
        die("the PostgreSQL server must run on this machine (no /proc/%d)", backend);
    return pm;
}

/* CPU seconds the server and its live processes have used.  The reporters' backends live
 * through a whole measured window, so differences over it are exact. */
static double db_cpu_seconds(int postmaster)
{
    g_autoptr(GDir) dir = g_dir_open("/proc", 0, NULL);
    const char *name;
    guint64 total = run_ns(postmaster);

    while ((name = g_dir_read_name(dir))) {
        int pid = atoi(name);
        if (pid > 0 && pid != postmaster && parent_of(pid) == postmaster)
            total += run_ns(pid);
    }
    return (double)total / 1e9;
}

/* ------------------------------------------------------------------ simulated agents */

typedef struct {
    char *host;
    VnJournal *journal;
    VnInstanceStore *store;
    VnTracker *tracker;
    VnReporter *reporter;
    GPtrArray *uuids; /* live instances */
} Sim;

static void on_changed(const VnInstanceRecord *rec, gpointer data)
{
    Sim *s = data;

    if (s->reporter)
        vn_reporter_instance(s->reporter, vn_agent_instance_row(rec));
}

static VnCapacity *hook_capacity(gpointer data)
{
    return vn_tracker_capacity(((Sim *)data)->tracker);
}

static Sim *sim_new(const char *dir, const char *host, VnVirtConn *virt, const VnConfig *cfg)
{
    Sim *s = g_new0(Sim, 1);
    g_autofree char *path = g_strdup_printf("%s/%s.db", dir, host);
    g_autofree char *inst = g_strdup_printf("%s/%s", dir, host);
    g_autoptr(GError) err = NULL;

    s->host = g_strdup(host);
    g_mkdir_with_parents(inst, 0700);
    if (!(s->journal = vn_journal_open(path, &err)) ||
        !(s->store = vn_instance_store_new(s->journal, host, &err)))
        die("%s: %s", host, err->message);
    s->tracker = vn_tracker_new(host, inst, s->store);
    vn_tracker_set_config(s->tracker, cfg);
    if (!vn_tracker_refresh(s->tracker, virt, &err))
        die("%s: %s", host, err->message);
    vn_instance_store_set_listener(s->store, on_changed, s);
    s->uuids = g_ptr_array_new_with_free_func(g_free);
    return s;
}

static void sim_start(Sim *s, gboolean nova)
{
    VnReporterConfig rc = { 0 };
    VnReporterHooks hooks = { hook_capacity, NULL, NULL, NULL, s };
    g_autoptr(GError) err = NULL;

    rc.connection = opt_dsn;
    rc.connect_timeout = 10;
    rc.retry_min = 1;
    rc.retry_max = 10;
    rc.host = s->host;
    rc.binary = "virtnode-compute";
    rc.topic = "compute";
    rc.version = "bench";
    rc.heartbeat_interval = 10;
    rc.report_interval = nova ? 60 : 10;
    rc.debounce_ms = nova ? 1 : 200;
    rc.write_unchanged = nova;
    s->reporter = vn_reporter_new(&rc, &hooks, &err);
    if (!s->reporter)
        die("%s: %s", s->host, err->message);
    vn_reporter_start(s->reporter);
}

static void sim_free(Sim *s)
{
    vn_reporter_free(s->reporter);
    vn_tracker_free(s->tracker);
    vn_instance_store_free(s->store);
    vn_journal_free(s->journal);
    g_ptr_array_free(s->uuids, TRUE);
    g_free(s->host);
    g_free(s);
}

/* One instance boots on or leaves @s, through the store and the tracker. */
static void churn(Sim *s, GRand *rng)
{
    g_autoptr(GError) err = NULL;

    if (s->uuids->len == 0 || (s->uuids->len < 8 && g_rand_boolean(rng))) {
        g_autoptr(VnInstanceRecord) r = vn_instance_record_new();
        r->uuid = g_uuid_string_random();
        r->name = g_strdup_printf("vm-%.8s", r->uuid);
        r->project_id = g_strdup("bench");
        r->user_id = g_strdup("bench");
        r->flavor.name = g_strdup("m1.small");
        r->flavor.vcpus = 1;
        r->flavor.memory_mb = 512;
        r->flavor.root_gb = 1;
        r->image.id = g_strdup("bench-image");
        r->host = g_strdup(s->host);
        r->vm_state = VN_VM_ACTIVE;
        r->power_state = VN_POWER_RUNNING;
        r->created_at = r->launched_at = g_get_real_time() / G_USEC_PER_SEC;
        if (!vn_tracker_claim(s->tracker, r->uuid, &r->flavor, &err) ||
            !vn_instance_store_create(s->store, r, "req-bench", &err) ||
            !vn_instance_store_end_task(s->store, r->uuid, VN_TASK_SCHEDULING, VN_VM_ACTIVE,
                                        VN_POWER_RUNNING, &err))
            die("%s: %s", s->host, err->message);
        g_ptr_array_add(s->uuids, g_strdup(r->uuid));
    } else {
        guint i = g_rand_int_range(rng, 0, (gint32)s->uuids->len);
        const char *uuid = g_ptr_array_index(s->uuids, i);
        if (!vn_instance_store_mark_deleted(s->store, uuid, &err))
            die("%s: %s", s->host, err->message);
        vn_tracker_drop(s->tracker, uuid);
        g_ptr_array_remove_index_fast(s->uuids, i);
    }
    vn_reporter_capacity_changed(s->reporter);
}

static guint64 total_writes(GPtrArray *sims)
{
    guint64 n = 0;

    for (guint i = 0; i < sims->len; i++) {
        VnReporterStats st;
        vn_reporter_get_stats(((Sim *)g_ptr_array_index(sims, i))->reporter, &st);
        n += st.writes;
    }
    return n;
}

typedef struct {
    double writes_per_s;
    double cpu_percent; /* of one core */
    double cpu_ms_per_write;
    guint64 writes;
    guint events;
} Result;

static Result run(const char *label, gboolean nova, const char *dir, VnVirtConn *virt,
                  const VnConfig *cfg, int postmaster)
{
    g_autoptr(GPtrArray) sims = g_ptr_array_new_with_free_func((GDestroyNotify)sim_free);
    g_autoptr(GRand) rng = g_rand_new_with_seed(42);
    Result res = { 0 };
    double cpu0, t0, t, end;
    guint64 w0;

    fprintf(stderr, "%s: starting %d agents\n", label, opt_agents);
    for (int i = 0; i < opt_agents; i++) {
        g_autofree char *host = g_strdup_printf("bench-%s-%03d", nova ? "nova" : "vn", i);
        g_ptr_array_add(sims, sim_new(dir, host, virt, cfg));
    }
    for (guint i = 0; i < sims->len; i++)
        sim_start(g_ptr_array_index(sims, i), nova);
    for (int waited = 0;; waited++) {
        guint up = 0;
        for (guint i = 0; i < sims->len; i++) {
            VnReporterStats st;
            vn_reporter_get_stats(((Sim *)g_ptr_array_index(sims, i))->reporter, &st);
            up += st.connected && st.writes >= 2;
        }
        if (up == sims->len)
            break;
        if (waited > 600)
            die("%s: only %u of %u agents reported within 60 s", label, up, sims->len);
        g_usleep(100 * 1000);
    }
    fprintf(stderr, "%s: all connected; %d s of warm-up, then %d s measured\n", label, opt_warmup,
            opt_seconds);
    /* the warm-up lets the first periodic cycles pass with churn already going */
    t = (double)g_get_monotonic_time() / G_USEC_PER_SEC;
    end = t + opt_warmup;
    cpu0 = 0;
    w0 = 0;
    t0 = 0;
    for (double next = t;;) {
        double now = (double)g_get_monotonic_time() / G_USEC_PER_SEC;
        if (t0 == 0 && now >= end) {
            t0 = now;
            w0 = total_writes(sims);
            cpu0 = db_cpu_seconds(postmaster);
            end = t0 + opt_seconds;
            res.events = 0;
            continue;
        }
        if (t0 > 0 && now >= end)
            break;
        if (opt_churn > 0 && now >= next) {
            churn(g_ptr_array_index(sims, g_rand_int_range(rng, 0, (gint32)sims->len)), rng);
            res.events++;
            next += 1.0 / opt_churn;
            continue;
        }
        g_usleep(10 * 1000);
    }
    {
        double wall = (double)g_get_monotonic_time() / G_USEC_PER_SEC - t0;
        double cpu = db_cpu_seconds(postmaster) - cpu0;
        res.writes = total_writes(sims) - w0;
        res.writes_per_s = res.writes / wall;
        res.cpu_percent = 100.0 * cpu / wall;
        res.cpu_ms_per_write = res.writes ? 1000.0 * cpu / res.writes : 0;
    }
    return res;
}

int main(int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "dsn", 0, 0, G_OPTION_ARG_STRING, &opt_dsn, "PostgreSQL connection string", "CONNINFO" },
        { "agents", 'n', 0, G_OPTION_ARG_INT, &opt_agents, "Simulated agents (200)", "N" },
        { "seconds", 0, 0, G_OPTION_ARG_INT, &opt_seconds, "Measured seconds per pattern (120)",
          "S" },
        { "warmup", 0, 0, G_OPTION_ARG_INT, &opt_warmup, "Warm-up seconds (15)", "S" },
        { "churn", 0, 0, G_OPTION_ARG_DOUBLE, &opt_churn,
          "Instance boots/deletes per second, fleet-wide (2)", "R" },
        { "json", 0, 0, G_OPTION_ARG_NONE, &opt_json, "One JSON line instead of a table", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL }
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- reporting load on PostgreSQL");
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) cfg = NULL;
    g_autofree char *dir = NULL;
    VnVirtConn *virt;
    PGconn *admin;
    int postmaster;
    Result v, n;

    vn_cli_log_init(FALSE);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err))
        die("%s", err->message);
    if (!opt_dsn)
        die("--dsn is required");
    if (opt_agents < 1 || opt_seconds < 1 || opt_churn < 0 || opt_warmup < 0)
        die("--agents and --seconds must be positive, --churn and --warmup not negative");
    cfg = vn_config_load_data("", 0, "defaults", &err);
    if (!cfg)
        die("%s", err->message);
    dir = g_dir_make_tmp("vnbench-report-XXXXXX", &err);
    if (!dir)
        die("%s", err->message);
    virt = vn_virt_conn_new("test:///default", 5, 5, NULL);
    postmaster = postmaster_pid();
    admin = db_connect();

    v = run("virtnode", FALSE, dir, virt, cfg, postmaster);
    n = run("Nova pattern", TRUE, dir, virt, cfg, postmaster);
    db_exec(admin, "DELETE FROM instances WHERE host LIKE 'bench-%'");
    db_exec(admin, "DELETE FROM compute_nodes WHERE host LIKE 'bench-%'");
    db_exec(admin, "DELETE FROM services WHERE host LIKE 'bench-%'");
    PQfinish(admin);
    vn_virt_conn_free(virt);
    {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_report: could not remove %s\n", dir);
    }

    if (opt_json) {
        printf("{\"bench\": \"report\", \"agents\": %d, \"seconds\": %d, \"churn_per_s\": %.2f, "
               "\"virtnode\": {\"writes_per_s\": %.2f, \"db_cpu_percent\": %.2f, "
               "\"db_cpu_ms_per_write\": %.3f}, \"nova\": {\"writes_per_s\": %.2f, "
               "\"db_cpu_percent\": %.2f, \"db_cpu_ms_per_write\": %.3f}, "
               "\"ratio\": {\"writes\": %.3f, \"db_cpu\": %.3f}}\n",
               opt_agents, opt_seconds, opt_churn, v.writes_per_s, v.cpu_percent,
               v.cpu_ms_per_write, n.writes_per_s, n.cpu_percent, n.cpu_ms_per_write,
               v.writes_per_s / n.writes_per_s, v.cpu_percent / n.cpu_percent);
        return 0;
    }
    printf("%d simulated agents reporting to one PostgreSQL, %d s measured per pattern,\n"
           "%.1f instance boots/deletes per second across the fleet\n\n",
           opt_agents, opt_seconds, opt_churn);
    printf("%-22s %12s %14s %16s\n", "", "writes/s", "DB CPU % core", "DB CPU ms/write");
    printf("%-22s %12.2f %14.2f %16.3f\n", "virtnode", v.writes_per_s, v.cpu_percent,
           v.cpu_ms_per_write);
    printf("%-22s %12.2f %14.2f %16.3f\n", "Nova's pattern", n.writes_per_s, n.cpu_percent,
           n.cpu_ms_per_write);
    printf("%-22s %12.3f %14.3f\n", "ratio virtnode/Nova", v.writes_per_s / n.writes_per_s,
           v.cpu_percent / n.cpu_percent);
    return 0;
}
