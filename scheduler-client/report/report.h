/* scheduler-client/report/report.h - what the scheduler reads about this host, written to
 * the central PostgreSQL: the service heartbeat, the host's capacity, its instances, their
 * actions and migrations.
 *
 * One thread owns one connection.  Capacity is written within @debounce of a change the
 * agent announces and checked every report_interval, but only written when it differs
 * from what was last written; the heartbeat goes every heartbeat_interval.  When the
 * database is down the agent keeps working: the latest state per instance and migration
 * waits in memory (bounded by their number), actions wait in the agent's journal, one log
 * line marks the outage and one its end, and everything is written again on reconnect.
 * Statements are prepared; rows are upserts. */
#pragma once

#include <glib.h>

#define VN_REPORT_ERROR (vn_report_error_quark())
GQuark vn_report_error_quark(void);

typedef enum {
    VN_REPORT_ERROR_CONFIG,
    VN_REPORT_ERROR_CONNECT,
    VN_REPORT_ERROR_SCHEMA,
    VN_REPORT_ERROR_QUERY,
    VN_REPORT_ERROR_LAST
} VnReportErrorCode;

typedef struct {
    char *host;
    char *hypervisor_type;
    gint64 hypervisor_version;
    char *hypervisor_hostname;
    char *cpu_info; /* JSON text */
    int vcpus;
    int vcpus_used;
    gint64 memory_mb;
    gint64 memory_mb_used;
    gint64 free_ram_mb;
    gint64 local_gb;
    gint64 local_gb_used;
    gint64 free_disk_gb;
    gint64 disk_available_least;
    int running_vms;
    double cpu_allocation_ratio;
    double ram_allocation_ratio;
    double disk_allocation_ratio;
    gint64 reserved_host_memory_mb;
    gint64 reserved_host_disk_mb;
    int reserved_host_cpus;
    char *stats; /* JSON text */
} VnCapacity;

void vn_capacity_free(VnCapacity *c);
gboolean vn_capacity_equal(const VnCapacity *a, const VnCapacity *b);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnCapacity, vn_capacity_free)

typedef struct {
    char *uuid;
    char *host;
    char *name;
    char *project_id;
    char *user_id;
    char *vm_state;
    char *task_state; /* NULL = none */
    int power_state;
    char *flavor; /* JSON text */
    char *image;  /* JSON text */
    char *fault;
    gint64 launched_at; /* unix seconds, 0 = null */
    gint64 terminated_at;
    gint64 generation; /* a row is applied only over an older generation */
} VnInstanceRow;

void vn_instance_row_free(VnInstanceRow *r);

typedef struct {
    char *journal_id; /* the agent journal's uuid: (journal_id, local_id) is unique */
    gint64 local_id;
    char *instance_uuid;
    char *request_id;
    char *action;
    gint64 start;
    gint64 finish; /* 0 = running */
    char *result;
    char *message;
} VnActionRow;

void vn_action_row_free(VnActionRow *r);

typedef struct {
    char *id; /* uuid */
    char *instance_uuid;
    char *source_host;
    char *dest_host;
    char *status;
    gboolean block_migration;
    gint64 memory_total, memory_processed, memory_remaining;
    gint64 disk_total, disk_processed, disk_remaining;
    gint64 downtime_ms; /* -1 = unknown */
    gint64 started_at;
    gint64 finished_at; /* 0 = not finished */
    char *error_message;
} VnMigrationRow;

void vn_migration_row_free(VnMigrationRow *r);
VnMigrationRow *vn_migration_row_copy(const VnMigrationRow *r);

typedef struct {
    const char *connection; /* libpq conninfo or URI */
    const char *password;   /* NULL: libpq's own sources */
    int connect_timeout;
    int retry_min;
    int retry_max;
    const char *host;
    const char *binary; /* "virtnode-compute" */
    const char *topic;
    const char *version;
    int report_interval;
    int heartbeat_interval;
    int debounce_ms;
    /* write the capacity row every report_interval even when it did not change (the
     * pattern of Nova's resource tracker; benchmarks compare against it) */
    gboolean write_unchanged;
} VnReporterConfig;

/* What the reporter asks the agent for, in the reporter thread. */
typedef struct {
    VnCapacity *(*capacity)(gpointer user_data);       /* current capacity, caller frees */
    GPtrArray *(*all_instances)(gpointer user_data);   /* VnInstanceRow*, after reconnect */
    GPtrArray *(*pending_actions)(gpointer user_data); /* VnActionRow* not yet written */
    void (*actions_written)(GPtrArray *rows, gpointer user_data);
    gpointer user_data;
} VnReporterHooks;

typedef struct {
    gboolean connected;
    guint64 writes;
    guint64 outages;
    gint64 last_heartbeat; /* unix seconds of the last heartbeat written */
    guint pending_instances;
} VnReporterStats;

typedef struct _VnReporter VnReporter;

VnReporter *vn_reporter_new(const VnReporterConfig *cfg, const VnReporterHooks *hooks,
                            GError **error);
void vn_reporter_start(VnReporter *r);

/* Intervals may change on reload. */
void vn_reporter_set_intervals(VnReporter *r, int report_interval, int heartbeat_interval);

/* The service row's disabled flag and reason (NULL when enabled), written at once and with
 * every heartbeat. */
void vn_reporter_set_service_state(VnReporter *r, gboolean disabled, const char *reason);

/* A message sent to this host's own queue came back through its consumer: the next
 * heartbeat carries the time (services.last_probe_at). */
void vn_reporter_probe_returned(VnReporter *r);

/* Something moved the capacity: write it within the debounce delay. */
void vn_reporter_capacity_changed(VnReporter *r);

/* The latest state of an instance (@row: transfer full); replaces any unwritten one. */
void vn_reporter_instance(VnReporter *r, VnInstanceRow *row);

/* The latest state of a migration (@row: transfer full). */
void vn_reporter_migration(VnReporter *r, VnMigrationRow *row);

/* New actions wait in the journal: fetch them through the hooks. */
void vn_reporter_actions_pending(VnReporter *r);

/* Waits up to @timeout_s until nothing waits to be written (e.g. before exit). */
gboolean vn_reporter_flush(VnReporter *r, double timeout_s);

void vn_reporter_get_stats(VnReporter *r, VnReporterStats *out);

void vn_reporter_free(VnReporter *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnReporter, vn_reporter_free)

/* Config check of a connection string (libpq's own parser). */
gboolean vn_report_conninfo_check(const char *value, GError **error);

/* For virtnodectl: the services and compute_nodes rows of @host, with the heartbeat's age
 * in seconds, as a JSON text.  Caller frees. */
char *vn_report_query_host(const char *connection, const char *password, const char *host,
                           GError **error);

/* For virtnodectl: the host the central database says runs instance @uuid.  Caller
 * frees. */
char *vn_report_query_instance_host(const char *connection, const char *password, const char *uuid,
                                    GError **error);

/* The instances among @uuids (NULL-terminated) that the central database says have settled
 * on a host other than @host: no task under way, not in error.  NULL-terminated; NULL
 * with @error when the database cannot be read. */
char **vn_report_query_moved(const char *connection, const char *password, const char *host,
                             const char *const *uuids, GError **error);

/* The same, for @r's host, over a connection of its own (any thread). */
char **vn_reporter_query_moved(VnReporter *r, const char *const *uuids, GError **error);

/* For virtnodectl: what the central database knows of instance @uuid (name, owner, host,
 * vm_state, flavor, image) as a JSON text.  Caller frees. */
char *vn_report_query_instance(const char *connection, const char *password, const char *uuid,
                               GError **error);

/* For virtnodectl: the last migrations row of instance @uuid as a JSON text (the record
 * that outlives the agents' own, which forget a migration once it ended).  Caller
 * frees. */
char *vn_report_query_migration(const char *connection, const char *password, const char *uuid,
                                GError **error);
