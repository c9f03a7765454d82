/* agent/ops/host.c - the host's own state: set_host_enabled and host_maintenance_mode.
 *
 * A disabled host refuses new guests (builds and incoming live migrations) with
 * ComputeHostDisabled; its guests keep running and every other operation is served.  The
 * state is kept in the journal, so it survives restarts, and written to the service row
 * (disabled, disabled_reason) at once and with every heartbeat.  Maintenance mode is a
 * disable that also reports what still runs here: moving the guests away is the
 * controller's decision. */
#include <string.h>

#include "agent/base/log.h"
#include "agent/ops/ops.h"
#include "api/error.h"

#define META_DISABLED    "host_disabled" /* value: the reason ("" for none) */
#define META_MAINTENANCE "host_maintenance"

static void push_to_reporter(VnAgent *a)
{
    g_mutex_lock(&a->host_lock);
    gboolean disabled = a->host_disabled;
    g_autofree char *reason = g_strdup(a->host_disabled_reason);
    g_mutex_unlock(&a->host_lock);
    if (a->reporter)
        vn_reporter_set_service_state(a->reporter, disabled, reason);
}

void vn_host_state_load(VnAgent *a)
{
    g_autofree char *reason = vn_journal_meta_get(a->journal, META_DISABLED);
    g_autofree char *maint = vn_journal_meta_get(a->journal, META_MAINTENANCE);

    g_mutex_lock(&a->host_lock);
    a->host_disabled = reason != NULL;
    g_free(a->host_disabled_reason);
    a->host_disabled_reason = reason && *reason ? g_strdup(reason) : NULL;
    a->host_maintenance = maint != NULL;
    g_mutex_unlock(&a->host_lock);
    if (reason)
        g_message("this host is disabled%s%s%s: it takes no new guests", *reason ? " (" : "",
                  reason, *reason ? ")" : "");
}

void vn_host_state_publish(VnAgent *a)
{
    push_to_reporter(a);
}

gboolean vn_host_check_enabled(VnAgent *a, const char *what, GError **error)
{
    gboolean ok;
    g_autofree char *reason = NULL;

    g_mutex_lock(&a->host_lock);
    ok = !a->host_disabled;
    reason = g_strdup(a->host_disabled_reason);
    g_mutex_unlock(&a->host_lock);
    if (!ok) {
        g_autoptr(VnConfig) cfg = vn_agent_config(a);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_HOST_DISABLED,
                    "host %s is disabled%s%s%s: it takes no %s", cfg->host, reason ? " (" : "",
                    reason ? reason : "", reason ? ")" : "", what);
    }
    return ok;
}

/* Records and applies the state; the reply describes it. */
static gboolean set_state(VnAgent *a, gboolean disabled, gboolean maintenance, const char *reason,
                          json_object **result, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    json_object *o;

    /* durable first: a restart must find what the controller was told */
    if (!vn_journal_meta_set(a->journal, META_DISABLED, disabled ? (reason ? reason : "") : NULL,
                             error) ||
        !vn_journal_meta_set(a->journal, META_MAINTENANCE, maintenance ? "1" : NULL, error))
        return FALSE;
    g_mutex_lock(&a->host_lock);
    a->host_disabled = disabled;
    a->host_maintenance = maintenance;
    g_free(a->host_disabled_reason);
    a->host_disabled_reason = disabled && reason ? g_strdup(reason) : NULL;
    g_mutex_unlock(&a->host_lock);
    push_to_reporter(a);
    vn_agent_notify_service(a, disabled ? "service.disable" : "service.enable");
    g_message("host %s %s%s%s%s", cfg->host,
              maintenance ? "in maintenance"
              : disabled  ? "disabled"
                          : "enabled",
              reason ? " (" : "", reason ? reason : "", reason ? ")" : "");
    o = json_object_new_object();
    json_object_object_add(o, "host", json_object_new_string(cfg->host));
    json_object_object_add(o, "enabled", json_object_new_boolean(!disabled));
    json_object_object_add(o, "maintenance", json_object_new_boolean(maintenance));
    json_object_object_add(o, "disabled_reason",
                           disabled && reason ? json_object_new_string(reason) : NULL);
    *result = o;
    return TRUE;
}

gboolean vn_op_set_host_enabled(VnOp *op, json_object **result, GError **error)
{
    return set_state(op->agent, !op->req->enabled, FALSE, op->req->reason, result, error);
}

gboolean vn_op_host_maintenance_mode(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    const char *reason =
        op->req->enabled ? (op->req->reason ? op->req->reason : "maintenance") : NULL;
    g_autoptr(GPtrArray) recs = NULL;
    json_object *list;

    if (!set_state(a, op->req->enabled, op->req->enabled, reason, result, error))
        return FALSE;
    /* what still runs here: for the controller to move or stop */
    recs = vn_instance_store_list(a->store, FALSE);
    list = json_object_new_array();
    for (guint i = 0; i < recs->len; i++) {
        const VnInstanceRecord *r = g_ptr_array_index(recs, i);
        if (r->vm_state == VN_VM_DELETED)
            continue;
        json_object *e = json_object_new_object();
        json_object_object_add(e, "uuid", json_object_new_string(r->uuid));
        json_object_object_add(e, "name", json_object_new_string(r->name ? r->name : ""));
        json_object_object_add(e, "vm_state",
                               json_object_new_string(vn_vm_state_name(r->vm_state)));
        json_object_object_add(e, "power_state", json_object_new_int(r->power_state));
        json_object_array_add(list, e);
    }
    json_object_object_add(*result, "instances", list);
    return TRUE;
}
