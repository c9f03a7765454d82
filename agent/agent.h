/* agent/agent.h - the daemon's one object: configuration, the components it wires
 * together (journal, instance store, libvirt, image cache, tracker, AMQP link, reporter,
 * status endpoint, dispatcher) and the agent's life cycle.
 *
 * Start-up: journal -> instances -> libvirt -> reconcile -> reporter -> AMQP -> HTTP ->
 * ready.  Stop (SIGTERM): stop consuming, let running operations finish within
 * graceful_shutdown_timeout, flush replies and reports, exit 0.  Reload (SIGHUP): build a
 * new configuration, apply what can be applied, warn about the rest. */
#pragma once

#include <gio/gio.h>
#include <json-c/json.h>

#include "agent/base/config.h"
#include "agent/state/instance_store.h"
#include "agent/state/journal.h"
#include "agent/state/tracker.h"
#include "agent/virt/conn.h"
#include "api/methods.h"
#include "network/bridge.h"
#include "scheduler-client/amqp/rpc.h"
#include "scheduler-client/report/report.h"
#include "storage/image_cache.h"
#include "storage/volume.h"

typedef struct _VnAgent VnAgent;
typedef struct _VnVolHealth VnVolHealth;

#define VN_DURATION_BUCKETS 12
typedef struct _VnDispatcher VnDispatcher;
typedef struct _VnMigrations VnMigrations;
typedef struct _VnStatusServer VnStatusServer;

/* Where replies go: the AMQP link normally, a test's sink in unit tests. */
typedef void (*VnReplyFunc)(gpointer data, const char *reply_q, const char *msg_id,
                            json_object *result, const VnRpcFailure *failure);

/* Counters shown on /metrics (updated atomically). */
typedef struct {
    gint requests_total;
    gint requests_failed;
    gint duplicates;
    gint builds_ok;
    gint builds_failed;
    gint ops_running;
    gint migrations_ok;
    gint migrations_failed;
    gint power_syncs;
    gint moved_removed; /* copies removed of guests that live on another host now */
} VnAgentCounters;

/* The daemon's object.  Seen by the main loop, the link thread, the reporter, the status
 * server, libvirt's event thread and every worker; each field says who may touch it. */
struct _VnAgent {
    /* immutable after vn_agent_new */
    char *config_path;
    VnReplyFunc reply; /* tests replace it before vn_agent_start */
    gpointer reply_data;
    gint64 started_at;

    /* under @cfg_lock: take a reference with vn_agent_config, read it lockless */
    GMutex cfg_lock;
    VnConfig *cfg;

    /* immutable after vn_agent_start returns (set up before any worker, link or timer
     * runs; freed by vn_agent_free after they all stopped).  Each is self-locking. */
    VnJournal *journal;
    VnInstanceStore *store;
    VnVirtConn *virt;
    VnImageCache *images;
    VnTracker *tracker;
    VnRpc *rpc;
    VnReporter *reporter;
    VnStatusServer *http;
    VnDispatcher *dispatcher;
    VnMigrations *migrations;
    VnNetHost *net;          /* bridges and uplinks (network/) */
    VnVolumes *volumes;      /* volume connectors (storage/) */
    VnVolHealth *vol_health; /* storage failure containment (ops/volumes.c) */
    GThreadPool *sync_pool;  /* one thread: power-state syncs, in order */
    char *mac_model;         /* "selinux" / "apparmor" when the host has one */
    gboolean dac_available;
    int lock_fd;

    /* main loop only */
    GMainLoop *loop;
    GPtrArray *timers; /* GSource ids */
    int exit_code;
    gint64 probe_sent_us; /* monotonic time the last command-path probe was sent */

    /* atomic (g_atomic_int_*) */
    gint ready;        /* started and serving */
    gint stopping;     /* a stop was requested: set once, never cleared */
    gint reconnecting; /* a libvirt reconnect thread is running */
    gint aging;        /* an image-cache aging thread is running */
    gint housekeeping; /* a housekeeping thread is running */
    gint vol_probing;  /* a volume health pass is running */
    gint probing;      /* a command-path probe is in flight */
    gint probe_ok_s;   /* monotonic second the last probe came back (0: none yet) */
    gint loop_beat;    /* monotonic second the main loop last turned (/healthz) */
    gint trim_due;     /* the last running operation ended: give freed memory back */
    VnAgentCounters counters;

    /* under @host_lock: the host's own state (ops/host.c), kept in the journal */
    GMutex host_lock;
    gboolean host_disabled;     /* takes no new guests */
    gboolean host_maintenance;  /* disabled for maintenance */
    char *host_disabled_reason; /* or NULL */

    /* under @durations_lock: how long each method's operations took (the
     * virtnode_operation_duration_seconds histogram, metrics.c) */
    GMutex durations_lock;
    guint64 durations[VN_METHOD_LAST][VN_DURATION_BUCKETS + 1]; /* per bucket, then +Inf */
    double durations_sum[VN_METHOD_LAST];
};

/* A new agent of @cfg (reference taken); nothing is started.  @config_path is re-read on
 * reload (NULL: no reload). */
VnAgent *vn_agent_new(VnConfig *cfg, const char *config_path);
void vn_agent_free(VnAgent *a);

/* Opens everything and starts serving; FALSE (logged) when a required part fails. */
gboolean vn_agent_start(VnAgent *a, GError **error);

/* Runs the main loop until a stop; returns the exit code. */
int vn_agent_run(VnAgent *a);

/* Graceful stop (also the SIGTERM handler's work). */
void vn_agent_request_stop(VnAgent *a);

/* Re-reads the configuration file (SIGHUP). */
void vn_agent_reload(VnAgent *a);

/* The host's disabled state (ops/host.c): loaded from the journal at start, published to
 * the service row once the reporter runs; FALSE with ComputeHostDisabled naming @what
 * ("new guests", "incoming migrations") when the host is disabled. */
void vn_host_state_load(VnAgent *a);
void vn_host_state_publish(VnAgent *a);
gboolean vn_host_check_enabled(VnAgent *a, const char *what, GError **error);

/* The current configuration (a reference: vn_config_unref it, or use g_autoptr). */
VnConfig *vn_agent_config(VnAgent *a);

/* Directory of an instance, and its files. Caller frees. */
char *vn_agent_instance_dir(VnAgent *a, const char *uuid);

/* Sends a reply through the configured sink. */
void vn_agent_reply(VnAgent *a, const char *reply_q, const char *msg_id, json_object *result,
                    const VnRpcFailure *failure);

/* Publishes a versioned notification about @rec (may be NULL for service events). */
void vn_agent_notify_instance(VnAgent *a, const char *event_type, const VnInstanceRecord *rec,
                              const char *fault);
void vn_agent_notify_service(VnAgent *a, const char *event_type);

/* Announces that the capacity moved (debounced write to the database). */
void vn_agent_capacity_changed(VnAgent *a);

/* The central database's row of an instance record.  Caller frees. */
VnInstanceRow *vn_agent_instance_row(const VnInstanceRecord *r);

/* Creates the parts that the unit tests drive without services: journal, store, tracker,
 * dispatcher, libvirt connection (cfg's uri) and image cache.  vn_agent_start calls it. */
gboolean vn_agent_open_local(VnAgent *a, GError **error);
