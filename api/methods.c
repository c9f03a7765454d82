/* api/methods.c - the method table and request validation. */
#include <stdlib.h>
#include <string.h>

#include "api/error.h"
#include "api/json.h"
#include "api/methods.h"

/* clang-format off */
static const VnMethodInfo methods[VN_METHOD_LAST] = {
    { VN_METHOD_PING, "ping", 0, VN_KIND_QUERY, FALSE, FALSE, FALSE },
    { VN_METHOD_BUILD_AND_RUN_INSTANCE, "build_and_run_instance", 0, VN_KIND_BUILD, TRUE, TRUE, FALSE },
    { VN_METHOD_TERMINATE_INSTANCE, "terminate_instance", 0, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_START_INSTANCE, "start_instance", 0, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_STOP_INSTANCE, "stop_instance", 0, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_REBOOT_INSTANCE, "reboot_instance", 0, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_PAUSE_INSTANCE, "pause_instance", 0, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_UNPAUSE_INSTANCE, "unpause_instance", 0, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_SUSPEND_INSTANCE, "suspend_instance", 0, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_RESUME_INSTANCE, "resume_instance", 0, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_GET_CONSOLE_OUTPUT, "get_console_output", 0, VN_KIND_QUERY, FALSE, FALSE, FALSE },
    { VN_METHOD_GET_INSTANCE, "get_instance", 0, VN_KIND_QUERY, FALSE, FALSE, FALSE },
    { VN_METHOD_LIST_INSTANCES, "list_instances", 0, VN_KIND_QUERY, FALSE, FALSE, FALSE },
    { VN_METHOD_GET_HOST_INFO, "get_host_info", 0, VN_KIND_QUERY, FALSE, FALSE, FALSE },
    { VN_METHOD_LIVE_MIGRATION, "live_migration", 1, VN_KIND_MIGRATION, TRUE, TRUE, FALSE },
    { VN_METHOD_CHECK_CAN_LIVE_MIGRATE_DESTINATION, "check_can_live_migrate_destination", 1,
      VN_KIND_QUERY, FALSE, FALSE, FALSE },
    { VN_METHOD_CHECK_CAN_LIVE_MIGRATE_SOURCE, "check_can_live_migrate_source", 1, VN_KIND_QUERY,
      FALSE, FALSE, FALSE },
    { VN_METHOD_PRE_LIVE_MIGRATION, "pre_live_migration", 1, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_POST_LIVE_MIGRATION_AT_DESTINATION, "post_live_migration_at_destination", 1,
      VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION, "rollback_live_migration_at_destination", 1,
      VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_LIVE_MIGRATION_ABORT, "live_migration_abort", 1, VN_KIND_QUERY, FALSE, FALSE, TRUE },
    { VN_METHOD_LIVE_MIGRATION_FORCE_COMPLETE, "live_migration_force_complete", 1, VN_KIND_QUERY,
      FALSE, FALSE, TRUE },
    { VN_METHOD_GET_MIGRATION, "get_migration", 1, VN_KIND_QUERY, FALSE, FALSE, FALSE },
    { VN_METHOD_ATTACH_INTERFACE, "attach_interface", 2, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_DETACH_INTERFACE, "detach_interface", 2, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_UPDATE_PORT_SECURITY, "update_port_security", 2, VN_KIND_OPERATION, TRUE, TRUE,
      FALSE },
    { VN_METHOD_ATTACH_VOLUME, "attach_volume", 3, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_DETACH_VOLUME, "detach_volume", 3, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_SET_HOST_ENABLED, "set_host_enabled", 3, VN_KIND_OPERATION, TRUE, FALSE, FALSE },
    { VN_METHOD_HOST_MAINTENANCE_MODE, "host_maintenance_mode", 3, VN_KIND_OPERATION, TRUE, FALSE,
      FALSE },
    { VN_METHOD_REBUILD_INSTANCE, "rebuild_instance", 4, VN_KIND_BUILD, TRUE, TRUE, FALSE },
    { VN_METHOD_SNAPSHOT_INSTANCE, "snapshot_instance", 4, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_RESIZE_INSTANCE, "resize_instance", 4, VN_KIND_MIGRATION, TRUE, TRUE, FALSE },
    { VN_METHOD_PREP_RESIZE, "prep_resize", 4, VN_KIND_OPERATION, FALSE, TRUE, FALSE },
    { VN_METHOD_FINISH_RESIZE, "finish_resize", 4, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_ABORT_RESIZE_AT_DESTINATION, "abort_resize_at_destination", 4, VN_KIND_OPERATION,
      TRUE, TRUE, FALSE },
    { VN_METHOD_CONFIRM_RESIZE, "confirm_resize", 4, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_CONFIRM_RESIZE_AT_SOURCE, "confirm_resize_at_source", 4, VN_KIND_OPERATION, TRUE,
      TRUE, FALSE },
    { VN_METHOD_REVERT_RESIZE, "revert_resize", 4, VN_KIND_OPERATION, TRUE, TRUE, FALSE },
    { VN_METHOD_FINISH_REVERT_RESIZE, "finish_revert_resize", 4, VN_KIND_OPERATION, TRUE, TRUE,
      FALSE },
};
/* clang-format on */

const VnMethodInfo *vn_method_info(VnMethod m)
{
    return m < VN_METHOD_LAST ? &methods[m] : NULL;
}

static gboolean parse_version(const char *v, int *major, int *minor)
{
    char *end = NULL;
    long a, b = 0;

    if (!v)
        v = "1.0";
    a = strtol(v, &end, 10);
    if (end == v || a < 0 || a > 1000)
        return FALSE;
    if (*end == '.') {
        const char *s = end + 1;
        b = strtol(s, &end, 10);
        if (end == s || b < 0 || b > 1000)
            return FALSE;
    }
    if (*end != '\0')
        return FALSE;
    *major = (int)a;
    *minor = (int)b;
    return TRUE;
}

const VnMethodInfo *vn_method_lookup(const char *ns, const char *name, const char *version,
                                     GError **error)
{
    int major, minor;

    if (ns && strcmp(ns, VN_API_BASE_NAMESPACE) != 0) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_UNSUPPORTED_VERSION,
                    "Endpoint does not support RPC version %s. Attempted method: %s",
                    version ? version : "1.0", name);
        return NULL;
    }
    if (!parse_version(version, &major, &minor) || major != VN_API_VERSION_MAJOR ||
        minor > VN_API_VERSION_MINOR) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_UNSUPPORTED_VERSION,
                    "Endpoint does not support RPC version %s. Attempted method: %s", version,
                    name);
        return NULL;
    }
    for (int i = 0; i < VN_METHOD_LAST; i++) {
        if (strcmp(methods[i].name, name) != 0)
            continue;
        /* the base namespace holds ping only, as Nova's baseapi does */
        if (ns && methods[i].method != VN_METHOD_PING)
            break;
        return &methods[i];
    }
    g_set_error(error, VN_API_ERROR, VN_API_ERROR_NO_SUCH_METHOD,
                "Endpoint does not support RPC method %s", name);
    return NULL;
}

void vn_request_free(VnRequest *req)
{
    if (!req)
        return;
    g_free(req->instance_uuid);
    if (req->ping_arg)
        json_object_put(req->ping_arg);
    vn_instance_record_free(req->spec);
    g_free(req->dest_host);
    g_free(req->source_host);
    if (req->migrate_data)
        json_object_put(req->migrate_data);
    vn_port_spec_free(req->port);
    g_free(req->port_id);
    if (req->rules)
        g_ptr_array_unref(req->rules);
    vn_volume_spec_free(req->volume);
    g_free(req->volume_id);
    g_free(req->reason);
    if (req->image) {
        vn_image_ref_clear(req->image);
        g_free(req->image);
    }
    g_free(req->image_id);
    g_free(req->upload_url);
    if (req->flavor) {
        vn_flavor_clear(req->flavor);
        g_free(req->flavor);
    }
    g_free(req);
}

static gboolean get_uuid(json_object *args, const char *key, char **out, GError **error)
{
    g_autofree char *raw = NULL;

    if (!vn_json_get_string(args, NULL, key, TRUE, 36, 36, &raw, error))
        return FALSE;
    *out = vn_uuid_canonical(raw);
    if (!*out) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "%s: '%s' is not a uuid", key, raw);
        return FALSE;
    }
    return TRUE;
}

static gboolean host_name_ok(const char *h)
{
    for (const char *p = h; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '.' && *p != '_')
            return FALSE;
    }
    return *h != '\0';
}

static gboolean get_host(json_object *args, const char *key, gboolean required, char **out,
                         GError **error)
{
    if (!vn_json_get_string(args, NULL, key, required, 1, 255, out, error))
        return FALSE;
    if (*out && !host_name_ok(*out)) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "%s: '%s' is not a host name (letters, digits, '-', '.', '_')", key, *out);
        return FALSE;
    }
    return TRUE;
}

static gboolean get_tristate(json_object *args, const char *key, int *out, GError **error)
{
    json_object *v = vn_json_member(args, key);

    *out = -1;
    if (!v)
        return TRUE;
    if (!json_object_is_type(v, json_type_boolean)) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "%s: expected true, false or null",
                    key);
        return FALSE;
    }
    *out = json_object_get_boolean(v) ? 1 : 0;
    return TRUE;
}

static gboolean get_migrate_data(json_object *args, VnRequest *req, GError **error)
{
    static const char *const keys[] = { "migration_id",
                                        "source_host",
                                        "dest_host",
                                        "dest_uri",
                                        "inbound_addr",
                                        "probe_name",
                                        "is_shared_instance_path",
                                        "block_migration",
                                        "instance",
                                        "disk_available_mb",
                                        "free_ram_mb",
                                        "cpu_info",
                                        "virt_type",
                                        "dest_instances_path",
                                        "dest_guest_uid",
                                        "disks",
                                        "volume_secrets",
                                        NULL };
    json_object *md = vn_json_member(args, "migrate_data");

    if (!md) {
        req->migrate_data = json_object_new_object();
        return TRUE;
    }
    if (!vn_json_expect_object(md, "migrate_data", keys, error))
        return FALSE;
    json_object *cpu = vn_json_member(md, "cpu_info");
    if (cpu) {
        static const char *const cpu_keys[] = { "xml", NULL };
        json_object *x;
        if (!vn_json_expect_object(cpu, "migrate_data.cpu_info", cpu_keys, error))
            return FALSE;
        x = vn_json_member(cpu, "xml");
        if (!x || !json_object_is_type(x, json_type_string) ||
            json_object_get_string_len(x) > 65536) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                        "migrate_data.cpu_info.xml: a string of at most 65536 bytes expected");
            return FALSE;
        }
    }
    /* volume id -> CHAP password, each a string of at most 255 bytes */
    json_object *secrets = vn_json_member(md, "volume_secrets");
    if (secrets) {
        if (!json_object_is_type(secrets, json_type_object) ||
            json_object_object_length(secrets) > VN_VOLUMES_MAX) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                        "migrate_data.volume_secrets: an object of at most %d entries expected",
                        VN_VOLUMES_MAX);
            return FALSE;
        }
        json_object_object_foreach(secrets, vid, pw)
        {
            if (!json_object_is_type(pw, json_type_string) || json_object_get_string_len(pw) < 1 ||
                json_object_get_string_len(pw) > 255 || strlen(vid) > 64) {
                g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                            "migrate_data.volume_secrets: volume ids map to strings of 1-255 "
                            "bytes");
                return FALSE;
            }
        }
    }
    /* the peer's record of the instance is validated like any other input, and must be the
     * instance the request names */
    json_object *inst = vn_json_member(md, "instance");
    if (inst) {
        g_autoptr(VnInstanceRecord) rec = vn_instance_record_from_json(inst, error);
        if (!rec) {
            g_prefix_error(error, "migrate_data.instance: ");
            return FALSE;
        }
        if (g_strcmp0(rec->uuid, req->instance_uuid) != 0) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                        "migrate_data.instance.uuid: '%s' is not the instance_uuid '%s'", rec->uuid,
                        req->instance_uuid);
            return FALSE;
        }
    }
    req->migrate_data = json_object_get(md);
    return TRUE;
}

/* The instance, networks and block_device_mapping of a build (or an evacuation). */
static gboolean parse_spec(VnRequest *req, json_object *args, GError **error)
{
    json_object *inst = vn_json_member(args, "instance");
    if (!inst) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "instance: missing");
        return FALSE;
    }
    req->spec = vn_instance_record_new();
    if (!vn_instance_spec_parse(inst, "instance", req->spec, error))
        return FALSE;
    req->instance_uuid = g_strdup(req->spec->uuid);
    GPtrArray *ports = vn_port_specs_parse(vn_json_member(args, "networks"), "networks", error);
    if (!ports)
        return FALSE;
    g_ptr_array_unref(req->spec->ports);
    req->spec->ports = ports;
    GPtrArray *vols = vn_volume_specs_parse(vn_json_member(args, "block_device_mapping"),
                                            "block_device_mapping", error);
    if (!vols)
        return FALSE;
    g_ptr_array_unref(req->spec->volumes);
    req->spec->volumes = vols;
    if (!req->spec->image.id && !vn_volume_specs_boot(vols)) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "instance.image: missing (a guest without an image boots from a "
                    "block_device_mapping entry with boot_index 0)");
        return FALSE;
    }
    return TRUE;
}

static gboolean parse_args(VnRequest *req, json_object *args, GError **error)
{
    static const char *const uuid_only[] = { "instance_uuid", NULL };
    gint64 n;

    switch (req->method) {
    case VN_METHOD_PING: {
        static const char *const keys[] = { "arg", NULL };
        if (!vn_json_expect_object(args, "args", keys, error))
            return FALSE;
        json_object *arg = vn_json_member(args, "arg");
        req->ping_arg = arg ? json_object_get(arg) : NULL;
        return TRUE;
    }
    case VN_METHOD_BUILD_AND_RUN_INSTANCE: {
        static const char *const keys[] = { "instance", "networks", "block_device_mapping", NULL };
        return vn_json_expect_object(args, "args", keys, error) && parse_spec(req, args, error);
    }
    case VN_METHOD_REBUILD_INSTANCE: {
        static const char *const keys[] = {
            "instance_uuid",        "image", "recreate", "instance", "networks",
            "block_device_mapping", NULL
        };
        json_object *image;
        if (!vn_json_expect_object(args, "args", keys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error) ||
            !vn_json_get_bool(args, NULL, "recreate", FALSE, &req->recreate, error))
            return FALSE;
        if ((image = vn_json_member(args, "image"))) {
            req->image = g_new0(VnImageRef, 1);
            if (!vn_image_ref_parse(image, "image", req->image, error))
                return FALSE;
        }
        if (!req->recreate) {
            /* the guest is here: its record has the rest */
            if (vn_json_member(args, "instance") || vn_json_member(args, "networks") ||
                vn_json_member(args, "block_device_mapping"))
                return vn_api_invalid(error, "instance, networks and block_device_mapping are "
                                             "for an evacuation (recreate true) only");
            return TRUE;
        }
        /* an evacuation: this host has nothing of the guest, the request says what it is */
        g_autofree char *named = g_steal_pointer(&req->instance_uuid);
        if (!parse_spec(req, args, error))
            return FALSE;
        if (strcmp(named, req->instance_uuid) != 0)
            return vn_api_invalid(error, "instance.uuid: '%s' is not the instance_uuid '%s'",
                                  req->instance_uuid, named);
        if (req->image) {
            vn_image_ref_clear(&req->spec->image);
            vn_image_ref_copy(&req->spec->image, req->image);
        }
        return TRUE;
    }
    case VN_METHOD_SNAPSHOT_INSTANCE: {
        static const char *const keys[] = { "instance_uuid", "image_id", "upload_url", NULL };
        if (!vn_json_expect_object(args, "args", keys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error) ||
            !vn_json_get_string(args, "args", "image_id", TRUE, 1, 255, &req->image_id, error) ||
            !vn_json_get_string(args, "args", "upload_url", TRUE, 8, 4096, &req->upload_url, error))
            return FALSE;
        if (!vn_url_acceptable(req->upload_url))
            return vn_api_invalid(error, "upload_url: only http:// and https:// URLs are accepted");
        return TRUE;
    }
    case VN_METHOD_STOP_INSTANCE: {
        static const char *const keys[] = { "instance_uuid", "clean_shutdown", "timeout", NULL };
        if (!vn_json_expect_object(args, "args", keys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error) ||
            !vn_json_get_bool(args, NULL, "clean_shutdown", TRUE, &req->clean_shutdown, error) ||
            !vn_json_get_int(args, NULL, "timeout", FALSE, 0, 86400, -1, &n, error))
            return FALSE;
        req->stop_timeout = (int)n;
        return TRUE;
    }
    case VN_METHOD_REBOOT_INSTANCE: {
        static const char *const keys[] = { "instance_uuid", "reboot_type", NULL };
        g_autofree char *type = NULL;
        if (!vn_json_expect_object(args, "args", keys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error) ||
            !vn_json_get_string(args, NULL, "reboot_type", FALSE, 1, 16, &type, error))
            return FALSE;
        if (!type || g_ascii_strcasecmp(type, "SOFT") == 0) {
            req->reboot_type = VN_REBOOT_SOFT;
        } else if (g_ascii_strcasecmp(type, "HARD") == 0) {
            req->reboot_type = VN_REBOOT_HARD;
        } else {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                        "reboot_type: '%s' is not SOFT or HARD", type);
            return FALSE;
        }
        return TRUE;
    }
    case VN_METHOD_GET_CONSOLE_OUTPUT: {
        static const char *const keys[] = { "instance_uuid", "tail_length", NULL };
        if (!vn_json_expect_object(args, "args", keys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error) ||
            !vn_json_get_int(args, NULL, "tail_length", FALSE, 0, 100000, 0, &n, error))
            return FALSE;
        req->console_lines = (int)n;
        return TRUE;
    }
    case VN_METHOD_LIST_INSTANCES:
    case VN_METHOD_GET_HOST_INFO:
        return vn_json_expect_object(args, "args", (const char *const[]){ NULL }, error);
    case VN_METHOD_LIVE_MIGRATION: {
        static const char *const keys[] = { "instance_uuid", "dest_host", "block_migration", NULL };
        return vn_json_expect_object(args, "args", keys, error) &&
               get_uuid(args, "instance_uuid", &req->instance_uuid, error) &&
               get_host(args, "dest_host", TRUE, &req->dest_host, error) &&
               get_tristate(args, "block_migration", &req->block_migration, error);
    }
    case VN_METHOD_RESIZE_INSTANCE: {
        static const char *const keys[] = { "instance_uuid", "dest_host", "flavor", NULL };
        json_object *f;
        if (!vn_json_expect_object(args, "args", keys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error) ||
            !get_host(args, "dest_host", FALSE, &req->dest_host, error))
            return FALSE;
        if ((f = vn_json_member(args, "flavor"))) {
            req->flavor = g_new0(VnFlavor, 1);
            if (!vn_flavor_parse(f, "flavor", req->flavor, error))
                return FALSE;
        }
        return TRUE;
    }
    case VN_METHOD_PREP_RESIZE:
    case VN_METHOD_FINISH_RESIZE:
    case VN_METHOD_ABORT_RESIZE_AT_DESTINATION:
    case VN_METHOD_CONFIRM_RESIZE_AT_SOURCE:
    case VN_METHOD_FINISH_REVERT_RESIZE:
    case VN_METHOD_CHECK_CAN_LIVE_MIGRATE_DESTINATION:
    case VN_METHOD_CHECK_CAN_LIVE_MIGRATE_SOURCE:
    case VN_METHOD_PRE_LIVE_MIGRATION:
    case VN_METHOD_POST_LIVE_MIGRATION_AT_DESTINATION:
    case VN_METHOD_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION: {
        static const char *const keys[] = { "instance_uuid", "source_host", "block_migration",
                                            "migrate_data", NULL };
        return vn_json_expect_object(args, "args", keys, error) &&
               get_uuid(args, "instance_uuid", &req->instance_uuid, error) &&
               get_host(args, "source_host", FALSE, &req->source_host, error) &&
               get_tristate(args, "block_migration", &req->block_migration, error) &&
               get_migrate_data(args, req, error);
    }
    case VN_METHOD_ATTACH_INTERFACE: {
        static const char *const keys[] = { "instance_uuid", "port", NULL };
        json_object *port;
        if (!vn_json_expect_object(args, "args", keys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error))
            return FALSE;
        if (!(port = vn_json_member(args, "port"))) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "port: missing");
            return FALSE;
        }
        req->port = vn_port_spec_parse(port, "port", error);
        return req->port != NULL;
    }
    case VN_METHOD_DETACH_INTERFACE:
    case VN_METHOD_UPDATE_PORT_SECURITY: {
        static const char *const dkeys[] = { "instance_uuid", "port_id", NULL };
        static const char *const ukeys[] = { "instance_uuid", "port_id", "security_groups", NULL };
        gboolean update = req->method == VN_METHOD_UPDATE_PORT_SECURITY;
        if (!vn_json_expect_object(args, "args", update ? ukeys : dkeys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error) ||
            !vn_json_get_string(args, "args", "port_id", TRUE, 1, 64, &req->port_id, error))
            return FALSE;
        if (update) {
            req->rules = vn_sg_rules_parse(vn_json_member(args, "security_groups"),
                                           "security_groups", error);
            return req->rules != NULL;
        }
        return TRUE;
    }
    case VN_METHOD_ATTACH_VOLUME: {
        static const char *const keys[] = { "instance_uuid", "block_device", NULL };
        json_object *bd;
        if (!vn_json_expect_object(args, "args", keys, error) ||
            !get_uuid(args, "instance_uuid", &req->instance_uuid, error))
            return FALSE;
        if (!(bd = vn_json_member(args, "block_device"))) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "block_device: missing");
            return FALSE;
        }
        req->volume = vn_volume_spec_parse(bd, "block_device", error);
        if (req->volume && req->volume->boot_index == 0) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                        "block_device.boot_index: a volume attached later cannot be the boot disk");
            return FALSE;
        }
        return req->volume != NULL;
    }
    case VN_METHOD_SET_HOST_ENABLED:
    case VN_METHOD_HOST_MAINTENANCE_MODE: {
        gboolean set = req->method == VN_METHOD_SET_HOST_ENABLED;
        static const char *const skeys[] = { "enabled", "reason", NULL };
        static const char *const mkeys[] = { "mode", "reason", NULL };
        const char *flag = set ? "enabled" : "mode";
        json_object *v;
        if (!vn_json_expect_object(args, "args", set ? skeys : mkeys, error) ||
            !vn_json_get_string(args, "args", "reason", FALSE, 1, 255, &req->reason, error))
            return FALSE;
        v = vn_json_member(args, flag);
        if (!v || !json_object_is_type(v, json_type_boolean)) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "%s: true or false expected",
                        flag);
            return FALSE;
        }
        req->enabled = json_object_get_boolean(v);
        return TRUE;
    }
    case VN_METHOD_DETACH_VOLUME: {
        static const char *const keys[] = { "instance_uuid", "volume_id", NULL };
        return vn_json_expect_object(args, "args", keys, error) &&
               get_uuid(args, "instance_uuid", &req->instance_uuid, error) &&
               vn_json_get_string(args, "args", "volume_id", TRUE, 1, 64, &req->volume_id, error);
    }
    default:
        return vn_json_expect_object(args, "args", uuid_only, error) &&
               get_uuid(args, "instance_uuid", &req->instance_uuid, error);
    }
}

VnRequest *vn_request_parse(const VnMethodInfo *m, json_object *args, GError **error)
{
    g_autoptr(VnRequest) req = g_new0(VnRequest, 1);
    g_autoptr(json_object) empty = NULL;

    req->method = m->method;
    req->stop_timeout = -1;
    req->clean_shutdown = TRUE;
    req->block_migration = -1;
    if (!args)
        args = empty = json_object_new_object();
    if (!parse_args(req, args, error))
        return NULL;
    return g_steal_pointer(&req);
}

char *vn_request_peek_instance(json_object *args)
{
    json_object *v = vn_json_member(args, "instance_uuid");
    json_object *inst;

    if (v && json_object_is_type(v, json_type_string))
        return vn_uuid_canonical(json_object_get_string(v));
    inst = vn_json_member(args, "instance");
    v = vn_json_member(inst, "uuid");
    if (v && json_object_is_type(v, json_type_string))
        return vn_uuid_canonical(json_object_get_string(v));
    return NULL;
}
