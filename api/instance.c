/* api/instance.c - the instance record: validation of build specs and the JSON form. */
#include <string.h>

#include "api/error.h"
#include "api/instance.h"
#include "api/json.h"

static const char *const vm_names[VN_VM_LAST] = {
    "building", "active", "stopped", "paused", "suspended", "error", "deleted", "resized",
};

static const char *const task_names[VN_TASK_LAST] = {
    NULL,
    "scheduling",
    "block_device_mapping",
    "networking",
    "spawning",
    "powering-off",
    "powering-on",
    "rebooting",
    "rebooting_hard",
    "pausing",
    "unpausing",
    "suspending",
    "resuming",
    "deleting",
    "migrating",
    "rebuilding",
    "rebuild_spawning",
    "image_snapshot",
    "image_uploading",
    "resize_prep",
    "resize_migrating",
    "resize_migrated",
    "resize_finish",
    "resize_confirming",
    "resize_reverting",
};

const char *vn_vm_state_name(VnVmState s)
{
    return s < VN_VM_LAST ? vm_names[s] : "unknown";
}

const char *vn_task_state_name(VnTaskState s)
{
    return s < VN_TASK_LAST ? task_names[s] : NULL;
}

gboolean vn_vm_state_from_name(const char *name, VnVmState *out)
{
    for (int i = 0; name && i < VN_VM_LAST; i++) {
        if (strcmp(vm_names[i], name) == 0) {
            *out = i;
            return TRUE;
        }
    }
    return FALSE;
}

gboolean vn_task_state_from_name(const char *name, VnTaskState *out)
{
    if (!name) {
        *out = VN_TASK_NONE;
        return TRUE;
    }
    for (int i = 1; i < VN_TASK_LAST; i++) {
        if (strcmp(task_names[i], name) == 0) {
            *out = i;
            return TRUE;
        }
    }
    return FALSE;
}

gboolean vn_power_state_valid(int v)
{
    return v == VN_POWER_NOSTATE || v == VN_POWER_RUNNING || v == VN_POWER_PAUSED ||
           v == VN_POWER_SHUTDOWN || v == VN_POWER_CRASHED || v == VN_POWER_SUSPENDED;
}

static GHashTable *string_map_new(void)
{
    return g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
}

static GHashTable *string_map_copy(GHashTable *src)
{
    GHashTable *dst = string_map_new();
    GHashTableIter it;
    gpointer k, v;

    if (src) {
        g_hash_table_iter_init(&it, src);
        while (g_hash_table_iter_next(&it, &k, &v))
            g_hash_table_insert(dst, g_strdup(k), g_strdup(v));
    }
    return dst;
}

VnInstanceRecord *vn_instance_record_new(void)
{
    VnInstanceRecord *r = g_new0(VnInstanceRecord, 1);

    r->flavor.extra_specs = string_map_new();
    r->metadata = string_map_new();
    r->ports = g_ptr_array_new_with_free_func((GDestroyNotify)vn_port_spec_free);
    r->volumes = g_ptr_array_new_with_free_func((GDestroyNotify)vn_volume_spec_free);
    return r;
}

void vn_image_ref_copy(VnImageRef *to, const VnImageRef *from)
{
    *to = *from;
    to->id = g_strdup(from->id);
    to->url = g_strdup(from->url);
    to->download_url = g_strdup(from->download_url);
    to->sha256 = g_strdup(from->sha256);
    to->disk_format = g_strdup(from->disk_format);
}

void vn_image_ref_clear(VnImageRef *im)
{
    g_clear_pointer(&im->id, g_free);
    g_clear_pointer(&im->url, g_free);
    g_clear_pointer(&im->download_url, g_free);
    g_clear_pointer(&im->sha256, g_free);
    g_clear_pointer(&im->disk_format, g_free);
}

void vn_flavor_copy(VnFlavor *to, const VnFlavor *from)
{
    *to = *from;
    to->name = g_strdup(from->name);
    to->extra_specs = string_map_copy(from->extra_specs);
}

void vn_flavor_clear(VnFlavor *f)
{
    g_clear_pointer(&f->name, g_free);
    g_clear_pointer(&f->extra_specs, g_hash_table_unref);
}

VnInstanceRecord *vn_instance_record_copy(const VnInstanceRecord *s)
{
    VnInstanceRecord *r = g_new0(VnInstanceRecord, 1);

    *r = *s;
    r->uuid = g_strdup(s->uuid);
    r->name = g_strdup(s->name);
    r->project_id = g_strdup(s->project_id);
    r->user_id = g_strdup(s->user_id);
    vn_flavor_copy(&r->flavor, &s->flavor);
    vn_image_ref_copy(&r->image, &s->image);
    r->metadata = string_map_copy(s->metadata);
    r->ports = g_ptr_array_new_with_free_func((GDestroyNotify)vn_port_spec_free);
    for (guint i = 0; s->ports && i < s->ports->len; i++)
        g_ptr_array_add(r->ports, vn_port_spec_copy(g_ptr_array_index(s->ports, i)));
    r->volumes = g_ptr_array_new_with_free_func((GDestroyNotify)vn_volume_spec_free);
    for (guint i = 0; s->volumes && i < s->volumes->len; i++)
        g_ptr_array_add(r->volumes, vn_volume_spec_copy(g_ptr_array_index(s->volumes, i)));
    r->user_data = g_strdup(s->user_data);
    r->host = g_strdup(s->host);
    r->fault_class = g_strdup(s->fault_class);
    r->fault_message = g_strdup(s->fault_message);
    r->security_label = g_strdup(s->security_label);
    r->request_id = g_strdup(s->request_id);
    return r;
}

void vn_instance_record_free(VnInstanceRecord *r)
{
    if (!r)
        return;
    g_free(r->uuid);
    g_free(r->name);
    g_free(r->project_id);
    g_free(r->user_id);
    vn_flavor_clear(&r->flavor);
    vn_image_ref_clear(&r->image);
    g_clear_pointer(&r->metadata, g_hash_table_unref);
    g_clear_pointer(&r->ports, g_ptr_array_unref);
    g_clear_pointer(&r->volumes, g_ptr_array_unref);
    g_free(r->user_data);
    g_free(r->host);
    g_free(r->fault_class);
    g_free(r->fault_message);
    g_free(r->security_label);
    g_free(r->request_id);
    g_free(r);
}

gboolean vn_flavor_parse(json_object *obj, const char *path, VnFlavor *f, GError **error)
{
    static const char *const keys[] = { "name",         "vcpus",   "memory_mb",   "root_gb",
                                        "ephemeral_gb", "swap_mb", "extra_specs", NULL };
    gint64 vcpus, mem, root, eph, swap;

    if (!vn_json_expect_object(obj, path, keys, error) ||
        !vn_json_get_string(obj, path, "name", FALSE, 1, 255, &f->name, error) ||
        !vn_json_get_int(obj, path, "vcpus", TRUE, 1, 1024, 0, &vcpus, error) ||
        !vn_json_get_int(obj, path, "memory_mb", TRUE, 16, 16 * 1024 * 1024, 0, &mem, error) ||
        !vn_json_get_int(obj, path, "root_gb", FALSE, 0, 65536, 0, &root, error) ||
        !vn_json_get_int(obj, path, "ephemeral_gb", FALSE, 0, 65536, 0, &eph, error) ||
        !vn_json_get_int(obj, path, "swap_mb", FALSE, 0, 1024 * 1024, 0, &swap, error))
        return FALSE;
    g_clear_pointer(&f->extra_specs, g_hash_table_unref);
    if (!vn_json_get_string_map(obj, path, "extra_specs", 128, &f->extra_specs, error))
        return FALSE;
    f->vcpus = (int)vcpus;
    f->memory_mb = (int)mem;
    f->root_gb = (int)root;
    f->ephemeral_gb = (int)eph;
    f->swap_mb = (int)swap;
    return TRUE;
}

char *vn_url_redact(const char *url)
{
    const char *scheme_end = strstr(url, "://");
    const char *auth, *auth_end, *at = NULL, *query, *frag;
    GString *out;

    if (!scheme_end)
        return g_strdup(url);
    auth = scheme_end + 3;
    auth_end = auth + strcspn(auth, "/?#");
    for (const char *p = auth; p < auth_end; p++) {
        if (*p == '@')
            at = p; /* the last '@' ends the user information */
    }
    out = g_string_new_len(url, auth - url);
    if (at) {
        g_string_append(out, "***");
        auth = at;
    }
    query = strchr(auth_end, '?');
    frag = strchr(auth_end, '#');
    if (query && frag && frag < query)
        query = NULL;
    g_string_append_len(out, auth, (query ? query : (frag ? frag : auth + strlen(auth))) - auth);
    if (query) {
        const char *end = frag ? frag : query + strlen(query);
        g_auto(GStrv) pairs = NULL;
        g_autofree char *q = g_strndup(query + 1, end - query - 1);
        pairs = g_strsplit(q, "&", -1);
        g_string_append_c(out, '?');
        for (char **p = pairs; *p; p++) {
            const char *eq = strchr(*p, '=');
            if (p != pairs)
                g_string_append_c(out, '&');
            if (eq)
                g_string_append_len(out, *p, eq - *p + 1);
            if (**p)
                g_string_append(out, "***");
        }
    }
    if (frag)
        g_string_append(out, frag);
    return g_string_free(out, FALSE);
}

/* Replaces the value of every member named like a secret, at any depth, and takes the
 * credentials out of every URL ("url", "upload_url", ...). */
static void redact_secrets(json_object *o)
{
    if (json_object_is_type(o, json_type_array)) {
        for (gsize i = 0; i < json_object_array_length(o); i++)
            redact_secrets(json_object_array_get_idx(o, i));
        return;
    }
    if (!json_object_is_type(o, json_type_object))
        return;
    json_object_object_foreach(o, key, val)
    {
        if (strstr(key, "password") || strstr(key, "secret")) {
            json_object_object_add(o, key, json_object_new_string("***"));
        } else if (g_str_has_suffix(key, "url") && json_object_is_type(val, json_type_string)) {
            g_autofree char *r = vn_url_redact(json_object_get_string(val));
            json_object_object_add(o, key, json_object_new_string(r));
        } else
            redact_secrets(val);
    }
}

json_object *vn_request_args_redacted(const char *method, json_object *args)
{
    json_object *copy = NULL;

    (void)method;
    if (!args || json_object_deep_copy(args, &copy, NULL) != 0)
        return args ? json_object_get(args) : NULL;
    redact_secrets(copy);
    return copy;
}

gboolean vn_url_acceptable(const char *url)
{
    if (g_ascii_strncasecmp(url, "http://", 7) != 0 && g_ascii_strncasecmp(url, "https://", 8) != 0)
        return FALSE;
    for (const char *p = url; *p; p++) {
        if (g_ascii_isspace(*p))
            return FALSE;
    }
    return TRUE;
}

gboolean vn_image_ref_parse(json_object *obj, const char *path, VnImageRef *im, GError **error)
{
    static const char *const keys[] = { "id",       "name",        "url",
                                        "sha256",   "disk_format", "size",
                                        "min_disk", "min_ram",     "container_format",
                                        NULL };
    gint64 size, min_disk, min_ram;
    g_autofree char *name = NULL;
    g_autofree char *container = NULL;

    if (!vn_json_expect_object(obj, path, keys, error) ||
        !vn_json_get_string(obj, path, "id", TRUE, 1, 255, &im->id, error) ||
        !vn_json_get_string(obj, path, "name", FALSE, 0, 255, &name, error) ||
        !vn_json_get_string(obj, path, "url", TRUE, 8, 4096, &im->url, error) ||
        !vn_json_get_string(obj, path, "sha256", TRUE, 64, 64, &im->sha256, error) ||
        !vn_json_get_string(obj, path, "disk_format", TRUE, 1, 16, &im->disk_format, error) ||
        !vn_json_get_string(obj, path, "container_format", FALSE, 0, 16, &container, error) ||
        !vn_json_get_int(obj, path, "size", FALSE, 0, G_GINT64_CONSTANT(1) << 50, 0, &size,
                         error) ||
        !vn_json_get_int(obj, path, "min_disk", FALSE, 0, 65536, 0, &min_disk, error) ||
        !vn_json_get_int(obj, path, "min_ram", FALSE, 0, 16 * 1024 * 1024, 0, &min_ram, error))
        return FALSE;
    if (!vn_url_acceptable(im->url))
        return vn_api_invalid(error, "%s.url: only http:// and https:// URLs are accepted", path);
    /* the credential stays in memory for the download; everything else sees the redacted */
    im->download_url = g_steal_pointer(&im->url);
    im->url = vn_url_redact(im->download_url);
    for (char *p = im->sha256; *p; p++) {
        if (!g_ascii_isxdigit(*p))
            return vn_api_invalid(error, "%s.sha256: expected 64 hexadecimal digits", path);
        *p = g_ascii_tolower(*p);
    }
    if (strcmp(im->disk_format, "qcow2") != 0 && strcmp(im->disk_format, "raw") != 0)
        return vn_api_invalid(error, "%s.disk_format: '%s' is not supported (qcow2, raw)", path,
                              im->disk_format);
    if (container && strcmp(container, "bare") != 0)
        return vn_api_invalid(error, "%s.container_format: only 'bare' is supported", path);
    im->size = size;
    im->min_disk = (int)min_disk;
    im->min_ram = (int)min_ram;
    return TRUE;
}

gboolean vn_instance_spec_parse(json_object *obj, const char *path, VnInstanceRecord *rec,
                                GError **error)
{
    static const char *const keys[] = { "uuid",  "name",     "project_id", "user_id", "flavor",
                                        "image", "metadata", "user_data",  NULL };
    g_autofree char *uuid = NULL;
    g_autofree char *flavor_path = g_strdup_printf("%s.flavor", path);
    g_autofree char *image_path = g_strdup_printf("%s.image", path);

    if (!vn_json_expect_object(obj, path, keys, error) ||
        !vn_json_get_string(obj, path, "uuid", TRUE, 36, 36, &uuid, error))
        return FALSE;
    rec->uuid = vn_uuid_canonical(uuid);
    if (!rec->uuid)
        return vn_api_invalid(error, "%s.uuid: '%s' is not a uuid", path, uuid);
    if (!vn_json_get_string(obj, path, "name", TRUE, 1, 255, &rec->name, error) ||
        !vn_json_get_string(obj, path, "project_id", FALSE, 0, 255, &rec->project_id, error) ||
        !vn_json_get_string(obj, path, "user_id", FALSE, 0, 255, &rec->user_id, error))
        return FALSE;
    if (!vn_json_member(obj, "flavor"))
        return vn_api_invalid(error, "%s: missing", flavor_path);
    if (!vn_flavor_parse(vn_json_member(obj, "flavor"), flavor_path, &rec->flavor, error))
        return FALSE;
    /* no image: the guest boots from a volume (checked with the block device mapping) */
    if (vn_json_member(obj, "image") &&
        !vn_image_ref_parse(vn_json_member(obj, "image"), image_path, &rec->image, error))
        return FALSE;
    g_clear_pointer(&rec->metadata, g_hash_table_unref);
    if (!vn_json_get_string_map(obj, path, "metadata", 128, &rec->metadata, error))
        return FALSE;
    g_clear_pointer(&rec->user_data, g_free);
    if (!vn_json_get_string(obj, path, "user_data", FALSE, 0, 87384, &rec->user_data, error))
        return FALSE;
    if (rec->user_data) {
        /* base64 of at most 64 KiB, as Nova's limit */
        gsize n = 0;
        for (const char *c = rec->user_data; *c; c++) {
            if (!g_ascii_isalnum(*c) && *c != '+' && *c != '/' && *c != '=' && *c != '\n')
                return vn_api_invalid(error, "%s.user_data: not base64", path);
        }
        g_free(g_base64_decode(rec->user_data, &n));
        if (n > 65536)
            return vn_api_invalid(error, "%s.user_data: %zu bytes, at most 65536", path, n);
    }
    if (rec->flavor.memory_mb < rec->image.min_ram)
        return vn_api_invalid(error, "%s.memory_mb: %d MiB is less than the image's min_ram %d MiB",
                              flavor_path, rec->flavor.memory_mb, rec->image.min_ram);
    if (rec->flavor.root_gb > 0 && rec->flavor.root_gb < rec->image.min_disk)
        return vn_api_invalid(error, "%s.root_gb: %d GiB is less than the image's min_disk %d GiB",
                              flavor_path, rec->flavor.root_gb, rec->image.min_disk);
    if (rec->image.size > 0 && rec->flavor.root_gb > 0 &&
        rec->image.size > (gint64)rec->flavor.root_gb << 30)
        return vn_api_invalid(
            error, "%s.root_gb: the image (%" G_GINT64_FORMAT " bytes) does not fit in %d GiB",
            flavor_path, rec->image.size, rec->flavor.root_gb);
    return TRUE;
}

json_object *vn_string_map_to_json(GHashTable *map)
{
    json_object *o = json_object_new_object();
    g_autoptr(GList) keys = map ? g_hash_table_get_keys(map) : NULL;

    keys = g_list_sort(keys, (GCompareFunc)strcmp); /* stable output for golden files */
    for (GList *l = keys; l; l = l->next)
        json_object_object_add(o, l->data,
                               json_object_new_string(g_hash_table_lookup(map, l->data)));
    return o;
}

static json_object *str_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

json_object *vn_instance_record_to_reply(const VnInstanceRecord *rec)
{
    json_object *o = vn_instance_record_to_json(rec);

    /* user data may carry a tenant's secrets: kept for the config drive, never echoed */
    json_object_object_del(o, "user_data");
    return o;
}

json_object *vn_flavor_to_json(const VnFlavor *f)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "name", str_or_null(f->name));
    json_object_object_add(o, "vcpus", json_object_new_int(f->vcpus));
    json_object_object_add(o, "memory_mb", json_object_new_int(f->memory_mb));
    json_object_object_add(o, "root_gb", json_object_new_int(f->root_gb));
    json_object_object_add(o, "ephemeral_gb", json_object_new_int(f->ephemeral_gb));
    json_object_object_add(o, "swap_mb", json_object_new_int(f->swap_mb));
    json_object_object_add(o, "extra_specs", vn_string_map_to_json(f->extra_specs));
    return o;
}

json_object *vn_image_ref_to_json(const VnImageRef *i)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", str_or_null(i->id));
    json_object_object_add(o, "url", str_or_null(i->url));
    json_object_object_add(o, "sha256", str_or_null(i->sha256));
    json_object_object_add(o, "disk_format", str_or_null(i->disk_format));
    json_object_object_add(o, "size", json_object_new_int64(i->size));
    json_object_object_add(o, "min_disk", json_object_new_int(i->min_disk));
    json_object_object_add(o, "min_ram", json_object_new_int(i->min_ram));
    return o;
}

static json_object *time_json(gint64 t)
{
    if (t <= 0)
        return NULL;
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);
    if (!dt)
        return NULL;
    g_autofree char *s = g_date_time_format(dt, "%Y-%m-%dT%H:%M:%SZ");
    return json_object_new_string(s);
}

static gboolean time_parse(json_object *obj, const char *key, gint64 *out, GError **error)
{
    g_autofree char *s = NULL;

    *out = 0;
    if (!vn_json_get_string(obj, "instance", key, FALSE, 1, 64, &s, error))
        return FALSE;
    if (!s)
        return TRUE;
    g_autoptr(GDateTime) dt = g_date_time_new_from_iso8601(s, NULL);
    if (!dt)
        return vn_api_invalid(error, "instance.%s: '%s' is not an ISO 8601 time", key, s);
    *out = g_date_time_to_unix(dt);
    return TRUE;
}

json_object *vn_instance_record_to_json(const VnInstanceRecord *r)
{
    json_object *o = json_object_new_object();
    const char *task = vn_task_state_name(r->task_state);

    json_object_object_add(o, "uuid", str_or_null(r->uuid));
    json_object_object_add(o, "name", str_or_null(r->name));
    json_object_object_add(o, "project_id", str_or_null(r->project_id));
    json_object_object_add(o, "user_id", str_or_null(r->user_id));
    json_object_object_add(o, "host", str_or_null(r->host));
    json_object_object_add(o, "vm_state", json_object_new_string(vn_vm_state_name(r->vm_state)));
    json_object_object_add(o, "task_state", task ? json_object_new_string(task) : NULL);
    json_object_object_add(o, "power_state", json_object_new_int(r->power_state));
    json_object_object_add(o, "created_at", time_json(r->created_at));
    json_object_object_add(o, "launched_at", time_json(r->launched_at));
    json_object_object_add(o, "terminated_at", time_json(r->terminated_at));
    json_object_object_add(o, "updated_at", time_json(r->updated_at));
    json_object_object_add(o, "progress", json_object_new_int(r->progress));
    json_object_object_add(o, "flavor", vn_flavor_to_json(&r->flavor));
    json_object_object_add(o, "image", r->image.id ? vn_image_ref_to_json(&r->image) : NULL);
    json_object_object_add(o, "metadata", vn_string_map_to_json(r->metadata));
    json_object_object_add(o, "ports", vn_port_specs_to_json(r->ports));
    json_object_object_add(o, "block_device_mapping", vn_volume_specs_to_json(r->volumes));
    if (r->user_data)
        json_object_object_add(o, "user_data", json_object_new_string(r->user_data));
    if (r->fault_message) {
        json_object *f = json_object_new_object();
        json_object_object_add(f, "class", str_or_null(r->fault_class));
        json_object_object_add(f, "message", json_object_new_string(r->fault_message));
        json_object_object_add(f, "created_at", time_json(r->fault_at));
        json_object_object_add(o, "fault", f);
    } else {
        json_object_object_add(o, "fault", NULL);
    }
    json_object_object_add(o, "guest_uid", json_object_new_int(r->guest_uid));
    json_object_object_add(o, "security_label", str_or_null(r->security_label));
    json_object_object_add(o, "request_id", str_or_null(r->request_id));
    json_object_object_add(o, "generation", json_object_new_int64(r->generation));
    return o;
}

VnInstanceRecord *vn_instance_record_from_json(json_object *obj, GError **error)
{
    static const char *const keys[] = {
        "uuid",       "name",        "project_id",     "user_id",
        "host",       "vm_state",    "task_state",     "power_state",
        "created_at", "launched_at", "terminated_at",  "updated_at",
        "progress",   "flavor",      "image",          "metadata",
        "fault",      "guest_uid",   "security_label", "request_id",
        "generation", "ports",       "user_data",      "block_device_mapping",
        NULL
    };
    g_autoptr(VnInstanceRecord) r = vn_instance_record_new();
    g_autoptr(json_object) spec = json_object_new_object();
    g_autofree char *vm = NULL;
    g_autofree char *task = NULL;
    gint64 power, progress, uid, generation;
    json_object *fault;

    if (!vn_json_expect_object(obj, "instance", keys, error))
        return NULL;
    /* the spec part is validated exactly as a build request */
    static const char *const spec_keys[] = { "uuid",  "name",     "project_id", "user_id", "flavor",
                                             "image", "metadata", "user_data",  NULL };
    for (const char *const *k = spec_keys; *k; k++) {
        json_object *v = vn_json_member(obj, *k);
        if (v)
            json_object_object_add(spec, *k, json_object_get(v));
    }
    if (!vn_instance_spec_parse(spec, "instance", r, error))
        return NULL;
    GPtrArray *ports = vn_port_specs_parse(vn_json_member(obj, "ports"), "instance.ports", error);
    if (!ports)
        return NULL;
    g_ptr_array_unref(r->ports);
    r->ports = ports;
    GPtrArray *vols = vn_volume_specs_from_record(vn_json_member(obj, "block_device_mapping"),
                                                  "instance.block_device_mapping", error);
    if (!vols)
        return NULL;
    g_ptr_array_unref(r->volumes);
    r->volumes = vols;
    if (!vn_json_get_string(obj, "instance", "host", FALSE, 0, 255, &r->host, error) ||
        !vn_json_get_string(obj, "instance", "vm_state", TRUE, 1, 32, &vm, error) ||
        !vn_json_get_string(obj, "instance", "task_state", FALSE, 1, 32, &task, error) ||
        !vn_json_get_int(obj, "instance", "power_state", TRUE, 0, 7, 0, &power, error) ||
        !vn_json_get_int(obj, "instance", "progress", FALSE, 0, 100, 0, &progress, error) ||
        !vn_json_get_int(obj, "instance", "guest_uid", FALSE, 0, G_MAXINT32, 0, &uid, error) ||
        !vn_json_get_int(obj, "instance", "generation", FALSE, 0, G_MAXINT64 - 1, 0, &generation,
                         error) ||
        !vn_json_get_string(obj, "instance", "security_label", FALSE, 0, 4096, &r->security_label,
                            error) ||
        !vn_json_get_string(obj, "instance", "request_id", FALSE, 0, 255, &r->request_id, error) ||
        !time_parse(obj, "created_at", &r->created_at, error) ||
        !time_parse(obj, "launched_at", &r->launched_at, error) ||
        !time_parse(obj, "terminated_at", &r->terminated_at, error) ||
        !time_parse(obj, "updated_at", &r->updated_at, error))
        return NULL;
    if (!vn_vm_state_from_name(vm, &r->vm_state))
        return vn_api_invalid(error, "instance.vm_state: '%s' is unknown", vm), NULL;
    if (!vn_task_state_from_name(task, &r->task_state))
        return vn_api_invalid(error, "instance.task_state: '%s' is unknown", task), NULL;
    if (!vn_power_state_valid((int)power))
        return vn_api_invalid(error, "instance.power_state: %d is unknown", (int)power), NULL;
    r->power_state = (VnPowerState)power;
    r->progress = (int)progress;
    r->guest_uid = (int)uid;
    r->generation = generation;
    fault = vn_json_member(obj, "fault");
    if (fault) {
        static const char *const fkeys[] = { "class", "message", "created_at", NULL };
        g_autofree char *at = NULL;
        if (!vn_json_expect_object(fault, "instance.fault", fkeys, error) ||
            !vn_json_get_string(fault, "instance.fault", "class", FALSE, 0, 255, &r->fault_class,
                                error) ||
            !vn_json_get_string(fault, "instance.fault", "message", TRUE, 0, 65536,
                                &r->fault_message, error) ||
            !vn_json_get_string(fault, "instance.fault", "created_at", FALSE, 1, 64, &at, error))
            return NULL;
        if (at) {
            g_autoptr(GDateTime) dt = g_date_time_new_from_iso8601(at, NULL);
            r->fault_at = dt ? g_date_time_to_unix(dt) : 0;
        }
    }
    return g_steal_pointer(&r);
}
