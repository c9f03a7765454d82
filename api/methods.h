/* api/methods.h - the RPC method table and typed, validated requests.
 *
 * The agent's API has a version, MAJOR.MINOR, as oslo.messaging endpoints do: a request
 * naming version X.Y is served when X is our major and Y is at most our minor; anything
 * else gets UnsupportedVersion, an unknown name NoSuchMethod.  Each method says how the
 * dispatcher treats it: its kind (which worker pool), whether it is journaled before the
 * broker is acknowledged (state-changing methods), and whether it waits for other
 * operations on the same instance. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

#include "api/instance.h"

#define VN_API_VERSION_MAJOR  1
#define VN_API_VERSION_MINOR  4
#define VN_API_BASE_NAMESPACE "baseapi"

typedef enum {
    VN_METHOD_PING,
    VN_METHOD_BUILD_AND_RUN_INSTANCE,
    VN_METHOD_TERMINATE_INSTANCE,
    VN_METHOD_START_INSTANCE,
    VN_METHOD_STOP_INSTANCE,
    VN_METHOD_REBOOT_INSTANCE,
    VN_METHOD_PAUSE_INSTANCE,
    VN_METHOD_UNPAUSE_INSTANCE,
    VN_METHOD_SUSPEND_INSTANCE,
    VN_METHOD_RESUME_INSTANCE,
    VN_METHOD_GET_CONSOLE_OUTPUT,
    VN_METHOD_GET_INSTANCE,
    VN_METHOD_LIST_INSTANCES,
    VN_METHOD_GET_HOST_INFO,
    VN_METHOD_LIVE_MIGRATION,
    VN_METHOD_CHECK_CAN_LIVE_MIGRATE_DESTINATION,
    VN_METHOD_CHECK_CAN_LIVE_MIGRATE_SOURCE,
    VN_METHOD_PRE_LIVE_MIGRATION,
    VN_METHOD_POST_LIVE_MIGRATION_AT_DESTINATION,
    VN_METHOD_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION,
    VN_METHOD_LIVE_MIGRATION_ABORT,
    VN_METHOD_LIVE_MIGRATION_FORCE_COMPLETE,
    VN_METHOD_GET_MIGRATION,
    VN_METHOD_ATTACH_INTERFACE,
    VN_METHOD_DETACH_INTERFACE,
    VN_METHOD_UPDATE_PORT_SECURITY,
    VN_METHOD_ATTACH_VOLUME,
    VN_METHOD_DETACH_VOLUME,
    VN_METHOD_SET_HOST_ENABLED,
    VN_METHOD_HOST_MAINTENANCE_MODE,
    VN_METHOD_REBUILD_INSTANCE,
    VN_METHOD_SNAPSHOT_INSTANCE,
    VN_METHOD_RESIZE_INSTANCE,
    VN_METHOD_PREP_RESIZE,
    VN_METHOD_FINISH_RESIZE,
    VN_METHOD_ABORT_RESIZE_AT_DESTINATION,
    VN_METHOD_CONFIRM_RESIZE,
    VN_METHOD_CONFIRM_RESIZE_AT_SOURCE,
    VN_METHOD_REVERT_RESIZE,
    VN_METHOD_FINISH_REVERT_RESIZE,
    VN_METHOD_LAST
} VnMethod;

typedef enum {
    VN_KIND_QUERY,     /* answered at once, never queued behind an instance's operation */
    VN_KIND_BUILD,     /* max_concurrent_builds */
    VN_KIND_OPERATION, /* max_concurrent_operations */
    VN_KIND_MIGRATION, /* max_concurrent_live_migrations */
    VN_KIND_LAST
} VnMethodKind;

typedef struct {
    VnMethod method;
    const char *name;
    int since_minor; /* API version 1.<since_minor> added it */
    VnMethodKind kind;
    gboolean journaled;    /* recorded before the broker is acknowledged */
    gboolean per_instance; /* one at a time per instance */
    gboolean control;      /* acts on another operation under way (abort, force-complete):
                            * not a read, though it runs as a query */
} VnMethodInfo;

const VnMethodInfo *vn_method_info(VnMethod m);

/* Finds @name in @namespace_ (NULL: the main API; "baseapi": ping) compatible with
 * @version (NULL: "1.0").  NoSuchMethod / UnsupportedVersion errors as oslo words them. */
const VnMethodInfo *vn_method_lookup(const char *namespace_, const char *name, const char *version,
                                     GError **error);

typedef enum { VN_REBOOT_SOFT, VN_REBOOT_HARD } VnRebootType;

/* One validated request.  Fields not used by the method are zero/NULL. */
typedef struct {
    VnMethod method;
    char *instance_uuid;       /* canonical; every per-instance method */
    json_object *ping_arg;     /* ping: the value of "arg" (may be NULL = null) */
    VnInstanceRecord *spec;    /* build, rebuild with recreate: the validated instance spec */
    gboolean recreate;         /* rebuild: evacuate (the guest's host is down) */
    VnImageRef *image;         /* rebuild: the new image (NULL: the one it has) */
    char *image_id;            /* snapshot: the new image's id */
    char *upload_url;          /* snapshot: where to PUT it (credentials in memory only) */
    VnFlavor *flavor;          /* resize: the new flavor (NULL: the same, a cold migration) */
    int stop_timeout;          /* stop: seconds of graceful wait, -1 = configured */
    gboolean clean_shutdown;   /* stop: FALSE = power off at once */
    VnRebootType reboot_type;  /* reboot */
    int console_lines;         /* get_console_output: tail lines, 0 = all that fit */
    char *dest_host;           /* live_migration */
    int block_migration;       /* -1 null (probe), 0 false, 1 true */
    char *source_host;         /* migration steps between agents */
    json_object *migrate_data; /* migration steps between agents (validated object) */
    VnPortSpec *port;          /* attach_interface */
    char *port_id;             /* detach_interface, update_port_security */
    GPtrArray *rules;          /* update_port_security: VnSgRule* */
    VnVolumeSpec *volume;      /* attach_volume (with its secret, in memory only) */
    char *volume_id;           /* detach_volume */
    gboolean enabled;          /* set_host_enabled: enabled; host_maintenance_mode: mode on */
    char *reason;              /* set_host_enabled, host_maintenance_mode: why, or NULL */
} VnRequest;

VnRequest *vn_request_parse(const VnMethodInfo *m, json_object *args, GError **error);
void vn_request_free(VnRequest *req);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnRequest, vn_request_free)

/* The instance uuid a request's args name, without full validation (for the journal and
 * per-instance queues of a request not parsed yet); NULL when none. */
char *vn_request_peek_instance(json_object *args);
