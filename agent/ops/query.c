/* agent/ops/query.c - the read-only methods (ping, get_instance, list_instances,
 * get_console_output, get_host_info) and the table from methods to operations. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/ops/guest.h"
#include "agent/ops/ops.h"
#include "api/error.h"
#include "api/json.h"

json_object *vn_ops_ping(VnAgent *a, const VnRequest *req)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    json_object *o = json_object_new_object();

    json_object_object_add(o, "service", json_object_new_string("virtnode"));
    json_object_object_add(o, "host", json_object_new_string(cfg->host));
    json_object_object_add(o, "arg", req->ping_arg ? json_object_get(req->ping_arg) : NULL);
    return o;
}

gboolean vn_op_get_instance(VnOp *op, json_object **result, GError **error)
{
    g_autoptr(VnInstanceRecord) rec =
        vn_instance_store_get(op->agent->store, op->req->instance_uuid);

    if (!rec) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND, "instance %s is not on this host",
                    op->req->instance_uuid);
        return FALSE;
    }
    *result = vn_instance_record_to_reply(rec);
    return TRUE;
}

gboolean vn_op_list_instances(VnOp *op, json_object **result, GError **error)
{
    g_autoptr(GPtrArray) recs = vn_instance_store_list(op->agent->store, FALSE);
    json_object *list = json_object_new_array();

    for (guint i = 0; i < recs->len; i++)
        json_object_array_add(list, vn_instance_record_to_reply(g_ptr_array_index(recs, i)));
    *result = list;
    return TRUE;
}

/* The last @max bytes of @path, cut to whole lines when @lines > 0. */
static char *tail_file(const char *path, gsize max, int lines, GError **error)
{
    g_autofree char *buf = NULL;
    struct stat st;
    off_t start;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND, "console log '%s': %s", path,
                    g_strerror(e));
        return NULL;
    }
    start = st.st_size > (off_t)max ? st.st_size - (off_t)max : 0;
    buf = g_malloc(max + 1);
    n = pread(fd, buf, max, start);
    close(fd);
    if (n < 0) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_OPERATION_FAILED, "reading '%s': %s", path,
                    g_strerror(errno));
        return NULL;
    }
    buf[n] = '\0';
    char *text = buf;
    if (start > 0) {
        /* drop the partial first line */
        char *nl = memchr(text, '\n', (size_t)n);
        if (nl)
            text = nl + 1;
    }
    if (lines > 0) {
        char *p = text + strlen(text);
        int seen = 0;
        if (p > text && p[-1] == '\n')
            p--;
        while (p > text) {
            if (p[-1] == '\n' && ++seen == lines)
                break;
            p--;
        }
        text = p;
    }
    /* the console carries whatever the guest printed: make it valid UTF-8 without NULs */
    for (char *c = text; *c; c++) {
        if (*c == '\r')
            *c = ' ';
    }
    return g_utf8_make_valid(text, -1);
}

gboolean vn_op_console_output(VnOp *op, json_object **result, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(op->agent);
    g_autoptr(VnInstanceRecord) rec =
        vn_instance_store_get(op->agent->store, op->req->instance_uuid);
    g_autofree char *path = NULL;
    g_autofree char *text = NULL;

    if (!rec || rec->vm_state == VN_VM_DELETED) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND, "instance %s is not on this host",
                    op->req->instance_uuid);
        return FALSE;
    }
    path = vn_guest_file(op->agent, rec->uuid, VN_GUEST_CONSOLE);
    text = tail_file(path, (gsize)cfg->console_output_max_bytes, op->req->console_lines, error);
    if (!text)
        return FALSE;
    *result = json_object_new_string(text);
    return TRUE;
}

gboolean vn_op_host_info(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(VnCapacity) c = vn_tracker_capacity(a->tracker);
    json_object *o = json_object_new_object();
    json_object *cap = json_object_new_object();

    json_object_object_add(o, "host", json_object_new_string(cfg->host));
    json_object_object_add(o, "version", json_object_new_string(VIRTNODE_VERSION));
    json_object_object_add(o, "virt_type",
                           json_object_new_string(vn_virt_type_name(cfg->virt_type)));
    json_object_object_add(o, "ready", json_object_new_boolean(g_atomic_int_get(&a->ready)));
    json_object_object_add(cap, "vcpus", json_object_new_int(c->vcpus));
    json_object_object_add(cap, "vcpus_used", json_object_new_int(c->vcpus_used));
    json_object_object_add(cap, "memory_mb", json_object_new_int64(c->memory_mb));
    json_object_object_add(cap, "memory_mb_used", json_object_new_int64(c->memory_mb_used));
    json_object_object_add(cap, "free_ram_mb", json_object_new_int64(c->free_ram_mb));
    json_object_object_add(cap, "local_gb", json_object_new_int64(c->local_gb));
    json_object_object_add(cap, "local_gb_used", json_object_new_int64(c->local_gb_used));
    json_object_object_add(cap, "disk_available_least",
                           json_object_new_int64(c->disk_available_least));
    json_object_object_add(cap, "running_vms", json_object_new_int(c->running_vms));
    json_object_object_add(o, "capacity", cap);
    json_object_object_add(o, "security_model",
                           json_object_new_string(a->mac_model       ? a->mac_model
                                                  : a->dac_available ? "dac"
                                                                     : "none"));
    *result = o;
    return TRUE;
}

gboolean vn_ops_run(VnOp *op, json_object **result, GError **error)
{
    *result = NULL;
    switch (op->info->method) {
    case VN_METHOD_PING:
        *result = vn_ops_ping(op->agent, op->req);
        return TRUE;
    case VN_METHOD_BUILD_AND_RUN_INSTANCE:
        return vn_op_build(op, result, error);
    case VN_METHOD_TERMINATE_INSTANCE:
        return vn_op_terminate(op, result, error);
    case VN_METHOD_START_INSTANCE:
        return vn_op_start(op, result, error);
    case VN_METHOD_STOP_INSTANCE:
        return vn_op_stop(op, result, error);
    case VN_METHOD_REBOOT_INSTANCE:
        return vn_op_reboot(op, result, error);
    case VN_METHOD_PAUSE_INSTANCE:
        return vn_op_pause(op, result, error);
    case VN_METHOD_UNPAUSE_INSTANCE:
        return vn_op_unpause(op, result, error);
    case VN_METHOD_SUSPEND_INSTANCE:
        return vn_op_suspend(op, result, error);
    case VN_METHOD_RESUME_INSTANCE:
        return vn_op_resume(op, result, error);
    case VN_METHOD_GET_CONSOLE_OUTPUT:
        return vn_op_console_output(op, result, error);
    case VN_METHOD_GET_INSTANCE:
        return vn_op_get_instance(op, result, error);
    case VN_METHOD_LIST_INSTANCES:
        return vn_op_list_instances(op, result, error);
    case VN_METHOD_GET_HOST_INFO:
        return vn_op_host_info(op, result, error);
    case VN_METHOD_LIVE_MIGRATION:
        return vn_op_live_migration(op, result, error);
    case VN_METHOD_CHECK_CAN_LIVE_MIGRATE_DESTINATION:
        return vn_op_check_dest(op, result, error);
    case VN_METHOD_CHECK_CAN_LIVE_MIGRATE_SOURCE:
        return vn_op_check_source(op, result, error);
    case VN_METHOD_PRE_LIVE_MIGRATION:
        return vn_op_pre_live_migration(op, result, error);
    case VN_METHOD_POST_LIVE_MIGRATION_AT_DESTINATION:
        return vn_op_post_live_migration_dest(op, result, error);
    case VN_METHOD_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION:
        return vn_op_rollback_dest(op, result, error);
    case VN_METHOD_LIVE_MIGRATION_ABORT:
        return vn_op_migration_abort(op, result, error);
    case VN_METHOD_LIVE_MIGRATION_FORCE_COMPLETE:
        return vn_op_migration_force_complete(op, result, error);
    case VN_METHOD_GET_MIGRATION:
        return vn_op_get_migration(op, result, error);
    case VN_METHOD_ATTACH_INTERFACE:
        return vn_op_attach_interface(op, result, error);
    case VN_METHOD_SET_HOST_ENABLED:
        return vn_op_set_host_enabled(op, result, error);
    case VN_METHOD_HOST_MAINTENANCE_MODE:
        return vn_op_host_maintenance_mode(op, result, error);
    case VN_METHOD_ATTACH_VOLUME:
        return vn_op_attach_volume(op, result, error);
    case VN_METHOD_DETACH_VOLUME:
        return vn_op_detach_volume(op, result, error);
    case VN_METHOD_DETACH_INTERFACE:
        return vn_op_detach_interface(op, result, error);
    case VN_METHOD_UPDATE_PORT_SECURITY:
        return vn_op_update_port_security(op, result, error);
    case VN_METHOD_REBUILD_INSTANCE:
        return vn_op_rebuild(op, result, error);
    case VN_METHOD_SNAPSHOT_INSTANCE:
        return vn_op_snapshot(op, result, error);
    case VN_METHOD_RESIZE_INSTANCE:
        return vn_op_resize(op, result, error);
    case VN_METHOD_PREP_RESIZE:
        return vn_op_prep_resize(op, result, error);
    case VN_METHOD_FINISH_RESIZE:
        return vn_op_finish_resize(op, result, error);
    case VN_METHOD_ABORT_RESIZE_AT_DESTINATION:
        return vn_op_abort_resize_dest(op, result, error);
    case VN_METHOD_CONFIRM_RESIZE:
        return vn_op_confirm_resize(op, result, error);
    case VN_METHOD_CONFIRM_RESIZE_AT_SOURCE:
        return vn_op_confirm_resize_source(op, result, error);
    case VN_METHOD_REVERT_RESIZE:
        return vn_op_revert_resize(op, result, error);
    case VN_METHOD_FINISH_REVERT_RESIZE:
        return vn_op_finish_revert_resize(op, result, error);
    case VN_METHOD_LAST:
        break;
    }
    g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERNAL, "no operation for method %s",
                op->info->name);
    return FALSE;
}
