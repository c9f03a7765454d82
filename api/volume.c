/* api/volume.c - the volume contract (see volume.h). */
#include <string.h>

#include <gio/gio.h>

#include "api/error.h"
#include "api/json.h"
#include "api/volume.h"

#define MAX_PATHS     8
#define MAX_LUN       16383
#define MAX_IQN       223
#define MAX_EXPORT    1024
#define MAX_OPTIONS   255
#define MAX_SECRET    255
#define ISCSI_PORT    3260
#define MAX_DEV_INDEX 25 /* vdb..vdz */

const char *vn_volume_type_name(VnVolumeType t)
{
    return t == VN_VOL_ISCSI ? "iscsi" : "nfs";
}

/* ------------------------------------------------------------------ life cycle */

static VnVolumeSpec *parse_entry(json_object *obj, const char *path, gboolean record,
                                 GError **error);

static void path_free(VnIscsiPath *p)
{
    if (!p)
        return;
    g_free(p->host);
    g_free(p->iqn);
    g_free(p);
}

VnVolumeSpec *vn_volume_spec_new(void)
{
    VnVolumeSpec *v = g_new0(VnVolumeSpec, 1);

    v->boot_index = -1;
    v->conn.paths = g_ptr_array_new_with_free_func((GDestroyNotify)path_free);
    return v;
}

void vn_volume_spec_free(VnVolumeSpec *v)
{
    if (!v)
        return;
    g_free(v->volume_id);
    g_free(v->device_name);
    g_free(v->bus);
    g_free(v->conn.export);
    g_free(v->conn.server);
    g_free(v->conn.path);
    g_free(v->conn.name);
    g_free(v->conn.options);
    g_free(v->conn.format);
    g_ptr_array_unref(v->conn.paths);
    g_free(v->conn.auth_username);
    if (v->conn.auth_password) {
        memset(v->conn.auth_password, 0, strlen(v->conn.auth_password));
        g_free(v->conn.auth_password);
    }
    g_free(v);
}

VnVolumeSpec *vn_volume_spec_copy(const VnVolumeSpec *v)
{
    g_autoptr(json_object) o = vn_volume_spec_to_json(v);
    VnVolumeSpec *c = parse_entry(o, "block_device", TRUE, NULL);

    /* the JSON form is complete but for the secret */
    if (c)
        c->conn.auth_password = g_strdup(v->conn.auth_password);
    return c;
}

/* ------------------------------------------------------------------ pieces */

static gboolean id_ok(const char *s)
{
    for (const char *p = s; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-')
            return FALSE;
    }
    return TRUE;
}

/* A host name (RFC 1123 labels) or an IP address; @text has no brackets. */
static gboolean host_ok(const char *text)
{
    g_autoptr(GInetAddress) a = g_inet_address_new_from_string(text);
    gsize len = strlen(text);

    if (a)
        return TRUE;
    if (len == 0 || len > 253)
        return FALSE;
    g_auto(GStrv) labels = g_strsplit(text, ".", -1);
    for (char **l = labels; *l; l++) {
        gsize n = strlen(*l);
        if (n == 0 || n > 63 || (*l)[0] == '-' || (*l)[n - 1] == '-')
            return FALSE;
        for (const char *p = *l; *p; p++) {
            if (!g_ascii_isalnum(*p) && *p != '-')
                return FALSE;
        }
    }
    return TRUE;
}

/* "host:port", "[v6]:port" or "host" (port @def_port) into *@host, *@port. */
static gboolean parse_portal(const char *text, int def_port, char **host, int *port)
{
    g_autofree char *h = NULL;
    const char *colon;
    gint64 p = def_port;

    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (!end)
            return FALSE;
        h = g_strndup(text + 1, end - text - 1);
        colon = end[1] == ':' ? end + 1 : NULL;
        if (end[1] && !colon)
            return FALSE;
        if (!strchr(h, ':'))
            return FALSE;
    } else {
        colon = strrchr(text, ':');
        if (colon && strchr(text, ':') != colon)
            return FALSE; /* a bare IPv6 address needs brackets */
        h = colon ? g_strndup(text, colon - text) : g_strdup(text);
    }
    if (colon) {
        char *end = NULL;
        if (!colon[1] || !g_ascii_isdigit(colon[1]))
            return FALSE;
        p = g_ascii_strtoll(colon + 1, &end, 10);
        if (*end || p < 1 || p > 65535)
            return FALSE;
    }
    if (!host_ok(h))
        return FALSE;
    *host = g_steal_pointer(&h);
    *port = (int)p;
    return TRUE;
}

/* An absolute path of printable characters, no "." or ".." component. */
static gboolean abs_path_ok(const char *p)
{
    if (p[0] != '/')
        return FALSE;
    for (const char *c = p; *c; c++) {
        if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e || *c == '\\')
            return FALSE;
    }
    g_auto(GStrv) parts = g_strsplit(p, "/", -1);
    for (char **s = parts; *s; s++) {
        if (strcmp(*s, ".") == 0 || strcmp(*s, "..") == 0)
            return FALSE;
    }
    return TRUE;
}

/* A file name: [A-Za-z0-9._-], not starting with a dot. */
static gboolean file_name_ok(const char *s)
{
    if (!*s || s[0] == '.')
        return FALSE;
    for (const char *p = s; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '.' && *p != '_' && *p != '-')
            return FALSE;
    }
    return TRUE;
}

/* Mount options: comma-separated key[=value] of [A-Za-z0-9._:/-]; never a secret nor a
 * second argument (no spaces, no quotes). */
static gboolean options_ok(const char *s)
{
    g_auto(GStrv) parts = g_strsplit(s, ",", -1);

    for (char **o = parts; *o; o++) {
        if (!**o)
            return FALSE;
        for (const char *p = *o; *p; p++) {
            if (!g_ascii_isalnum(*p) && !strchr("._:/=-", *p))
                return FALSE;
        }
    }
    return TRUE;
}

/* iqn.YYYY-MM.naming-authority[:unique], eui.<16 hex> or naa.<16|32 hex> (RFC 3720). */
static gboolean iqn_ok(const char *s)
{
    gsize n = strlen(s);

    if (n > MAX_IQN)
        return FALSE;
    if (g_str_has_prefix(s, "eui.") || g_str_has_prefix(s, "naa.")) {
        gsize hex = n - 4;
        if (hex != 16 && !(g_str_has_prefix(s, "naa.") && hex == 32))
            return FALSE;
        for (const char *p = s + 4; *p; p++) {
            if (!g_ascii_isxdigit(*p))
                return FALSE;
        }
        return TRUE;
    }
    if (!g_str_has_prefix(s, "iqn.") || n < 12)
        return FALSE;
    for (int i = 4; i < 11; i++) {
        if (i == 8 ? s[i] != '-' : !g_ascii_isdigit(s[i]))
            return FALSE;
    }
    if (s[11] != '.')
        return FALSE;
    for (const char *p = s + 12; *p; p++) {
        if (!g_ascii_islower(*p) && !g_ascii_isdigit(*p) && !strchr(".-:", *p))
            return FALSE;
    }
    return s[12] != '\0' && s[12] != ':';
}

/* A secret: printable, no spaces (iscsiadm and libvirt take it as one word).  Never
 * quoted in an error. */
static gboolean get_secret(json_object *obj, const char *path, const char *key, char **out,
                           GError **error)
{
    json_object *v = vn_json_member(obj, key);
    const char *s;

    *out = NULL;
    if (!v)
        return TRUE;
    if (!json_object_is_type(v, json_type_string))
        return vn_api_invalid(error, "%s.%s: expected a string", path, key);
    s = json_object_get_string(v);
    if (!*s || strlen(s) > MAX_SECRET)
        return vn_api_invalid(error, "%s.%s: must be 1-%d characters", path, key, MAX_SECRET);
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e)
            return vn_api_invalid(error, "%s.%s: only printable characters without spaces", path,
                                  key);
    }
    *out = g_strdup(s);
    return TRUE;
}

/* Keys Cinder sends in data that the agent accepts and does not need: checked for type,
 * then ignored. */
static gboolean common_data(json_object *data, const char *path, const char *volume_id,
                            VnConnInfo *c, GError **error)
{
    g_autofree char *mode = NULL;
    g_autofree char *vid = NULL;
    gboolean encrypted = FALSE;
    json_object *qos;

    if (!vn_json_get_string(data, path, "access_mode", FALSE, 2, 2, &mode, error) ||
        !vn_json_get_string(data, path, "volume_id", FALSE, 1, 64, &vid, error) ||
        !vn_json_get_bool(data, path, "encrypted", FALSE, &encrypted, error) ||
        !vn_json_get_bool(data, path, "discard", FALSE, &c->discard, error))
        return FALSE;
    if (mode && strcmp(mode, "rw") != 0 && strcmp(mode, "ro") != 0)
        return vn_api_invalid(error, "%s.access_mode: '%s' is not rw or ro", path, mode);
    c->read_only = mode && strcmp(mode, "ro") == 0;
    if (vid && volume_id && strcmp(vid, volume_id) != 0)
        return vn_api_invalid(error, "%s.volume_id: '%s' is not the entry's volume_id '%s'", path,
                              vid, volume_id);
    if (encrypted)
        return vn_api_invalid(error, "%s.encrypted: encrypted volumes are not supported", path);
    qos = vn_json_member(data, "qos_specs");
    if (qos && !json_object_is_type(qos, json_type_object))
        return vn_api_invalid(error, "%s.qos_specs: expected an object", path);
    return TRUE;
}

static gboolean parse_nfs(json_object *data, const char *path, const char *volume_id, VnConnInfo *c,
                          GError **error)
{
    static const char *const keys[] = { "export",      "name",      "options",   "format",
                                        "access_mode", "volume_id", "encrypted", "discard",
                                        "qos_specs",   "cacheable", NULL };
    g_autofree char *export = NULL;
    const char *sep;
    gboolean cacheable;

    if (!vn_json_expect_object(data, path, keys, error) ||
        !vn_json_get_string(data, path, "export", TRUE, 3, MAX_EXPORT, &export, error) ||
        !vn_json_get_string(data, path, "name", TRUE, 1, 255, &c->name, error) ||
        !vn_json_get_string(data, path, "options", FALSE, 0, MAX_OPTIONS, &c->options, error) ||
        !vn_json_get_string(data, path, "format", FALSE, 1, 8, &c->format, error) ||
        !vn_json_get_bool(data, path, "cacheable", FALSE, &cacheable, error) ||
        !common_data(data, path, volume_id, c, error))
        return FALSE;
    /* host:/path, [v6]:/path */
    sep = export[0] == '[' ? strstr(export, "]:/") : strstr(export, ":/");
    if (!sep)
        return vn_api_invalid(error, "%s.export: '%s' is not host:/path", path, export);
    if (export[0] == '[') {
        c->server = g_strndup(export + 1, sep - export - 1);
        sep++;
        if (!strchr(c->server, ':'))
            return vn_api_invalid(error, "%s.export: '%s' has a bad host", path, export);
    } else {
        c->server = g_strndup(export, sep - export);
        if (strchr(c->server, ':'))
            return vn_api_invalid(error, "%s.export: an IPv6 host needs brackets in '%s'", path,
                                  export);
    }
    if (!host_ok(c->server))
        return vn_api_invalid(error, "%s.export: '%s' has a bad host", path, export);
    c->path = g_strdup(sep + 1);
    if (!abs_path_ok(c->path))
        return vn_api_invalid(error,
                              "%s.export: the path of '%s' must be absolute, printable, "
                              "without . or .. components",
                              path, export);
    if (strlen(c->path) > 1 && g_str_has_suffix(c->path, "/"))
        c->path[strlen(c->path) - 1] = '\0';
    c->export = g_steal_pointer(&export);
    if (!file_name_ok(c->name))
        return vn_api_invalid(error,
                              "%s.name: '%s' is not a file name ([A-Za-z0-9._-], no "
                              "leading dot)",
                              path, c->name);
    if (c->options && !*c->options)
        g_clear_pointer(&c->options, g_free);
    if (c->options && !options_ok(c->options))
        return vn_api_invalid(error,
                              "%s.options: '%s' is not a comma-separated list of "
                              "key[=value] mount options",
                              path, c->options);
    if (!c->format)
        c->format = g_strdup("raw");
    if (strcmp(c->format, "raw") != 0 && strcmp(c->format, "qcow2") != 0)
        return vn_api_invalid(error, "%s.format: '%s' is not raw or qcow2", path, c->format);
    return TRUE;
}

/* A list member of strings (@ints: integers) of exactly @want entries (0: any, 1-MAX). */
static json_object *get_list(json_object *data, const char *path, const char *key, GError **error)
{
    json_object *l = vn_json_member(data, key);

    if (!l)
        return NULL;
    if (!json_object_is_type(l, json_type_array) || json_object_array_length(l) < 1 ||
        json_object_array_length(l) > MAX_PATHS) {
        vn_api_invalid(error, "%s.%s: expected a list of 1-%d entries", path, key, MAX_PATHS);
        return NULL;
    }
    return l;
}

static gboolean add_path(VnConnInfo *c, const char *path, const char *what, const char *portal,
                         const char *iqn, gint64 lun, GError **error)
{
    VnIscsiPath *p = g_new0(VnIscsiPath, 1);

    g_ptr_array_add(c->paths, p);
    if (!parse_portal(portal, ISCSI_PORT, &p->host, &p->port))
        return vn_api_invalid(error, "%s.%s: '%s' is not host:port", path, what, portal);
    if (!iqn_ok(iqn))
        return vn_api_invalid(error,
                              "%s: '%s' is not an iSCSI qualified name (iqn., eui. or "
                              "naa.)",
                              path, iqn);
    if (lun < 0 || lun > MAX_LUN)
        return vn_api_invalid(error, "%s: LUN %" G_GINT64_FORMAT " is outside 0-%d", path, lun,
                              MAX_LUN);
    p->iqn = g_strdup(iqn);
    p->lun = (int)lun;
    for (guint i = 0; i + 1 < c->paths->len; i++) {
        const VnIscsiPath *o = g_ptr_array_index(c->paths, i);
        if (strcmp(o->host, p->host) == 0 && o->port == p->port && strcmp(o->iqn, p->iqn) == 0)
            return vn_api_invalid(error, "%s.%s: portal '%s' is listed twice", path, what, portal);
    }
    return TRUE;
}

static gboolean parse_iscsi(json_object *data, const char *path, const char *volume_id,
                            gboolean record, VnConnInfo *c, GError **error)
{
    static const char *const keys[] = {
        "target_portal", "target_iqn",  "target_lun",    "target_portals", "target_iqns",
        "target_luns",   "auth_method", "auth_username", "auth_password",  "discard",
        "access_mode",   "volume_id",   "encrypted",     "qos_specs",      "target_discovered",
        "cacheable",     NULL
    };
    g_autofree char *portal = NULL;
    g_autofree char *iqn = NULL;
    g_autofree char *method = NULL;
    gint64 lun;
    gboolean flag;
    json_object *portals, *iqns, *luns;
    GError *e = NULL;

    if (!vn_json_expect_object(data, path, keys, error) ||
        !vn_json_get_string(data, path, "target_portal", TRUE, 1, 300, &portal, error) ||
        !vn_json_get_string(data, path, "target_iqn", TRUE, 1, MAX_IQN, &iqn, error) ||
        !vn_json_get_int(data, path, "target_lun", FALSE, 0, MAX_LUN, 0, &lun, error) ||
        !vn_json_get_string(data, path, "auth_method", FALSE, 1, 16, &method, error) ||
        !vn_json_get_string(data, path, "auth_username", FALSE, 1, 255, &c->auth_username, error) ||
        !get_secret(data, path, "auth_password", &c->auth_password, error) ||
        !vn_json_get_bool(data, path, "target_discovered", FALSE, &flag, error) ||
        !vn_json_get_bool(data, path, "cacheable", FALSE, &flag, error) ||
        !common_data(data, path, volume_id, c, error))
        return FALSE;
    if (!add_path(c, path, "target_portal", portal, iqn, lun, error))
        return FALSE;
    portals = get_list(data, path, "target_portals", &e);
    iqns = e ? NULL : get_list(data, path, "target_iqns", &e);
    luns = e ? NULL : get_list(data, path, "target_luns", &e);
    if (e) {
        g_propagate_error(error, e);
        return FALSE;
    }
    if (portals) {
        gsize n = json_object_array_length(portals);
        gboolean first_found = FALSE;
        if ((iqns && json_object_array_length(iqns) != n) ||
            (luns && json_object_array_length(luns) != n))
            return vn_api_invalid(error,
                                  "%s: target_portals, target_iqns and target_luns must "
                                  "have one entry per portal",
                                  path);
        for (gsize i = 0; i < n; i++) {
            json_object *pp = json_object_array_get_idx(portals, i);
            json_object *ii = iqns ? json_object_array_get_idx(iqns, i) : NULL;
            json_object *ll = luns ? json_object_array_get_idx(luns, i) : NULL;
            g_autofree char *where = g_strdup_printf("%s.target_portals[%zu]", path, i);
            g_autofree char *h = NULL;
            int port;
            if (!json_object_is_type(pp, json_type_string) ||
                (ii && !json_object_is_type(ii, json_type_string)) ||
                (ll && !json_object_is_type(ll, json_type_int)))
                return vn_api_invalid(error, "%s: portals and iqns are strings, luns integers",
                                      where);
            const char *pi = ii ? json_object_get_string(ii) : iqn;
            gint64 li = ll ? json_object_get_int64(ll) : lun;
            if (!parse_portal(json_object_get_string(pp), ISCSI_PORT, &h, &port))
                return vn_api_invalid(error, "%s: '%s' is not host:port", where,
                                      json_object_get_string(pp));
            const VnIscsiPath *first = g_ptr_array_index(c->paths, 0);
            if (strcmp(h, first->host) == 0 && port == first->port && strcmp(pi, first->iqn) == 0) {
                if (li != first->lun)
                    return vn_api_invalid(error, "%s: the LUN differs from target_lun", where);
                first_found = TRUE;
                continue; /* target_portal itself */
            }
            if (!add_path(c, where, "portal", json_object_get_string(pp), pi, li, error))
                return FALSE;
        }
        if (!first_found)
            return vn_api_invalid(error, "%s.target_portals: does not list target_portal", path);
    } else if (iqns || luns) {
        return vn_api_invalid(error, "%s: target_iqns and target_luns need target_portals", path);
    }
    if (method && g_ascii_strcasecmp(method, "CHAP") != 0)
        return vn_api_invalid(error, "%s.auth_method: '%s' is not supported (CHAP only)", path,
                              method);
    if (method && (!c->auth_username || (!c->auth_password && !record)))
        return vn_api_invalid(error,
                              "%s: auth_method CHAP needs auth_username and "
                              "auth_password",
                              path);
    if (!method && (c->auth_username || c->auth_password))
        return vn_api_invalid(error,
                              "%s: auth_username and auth_password need auth_method "
                              "CHAP",
                              path);
    for (const char *p = c->auth_username ? c->auth_username : ""; *p; p++) {
        if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e)
            return vn_api_invalid(error,
                                  "%s.auth_username: only printable characters without "
                                  "spaces",
                                  path);
    }
    return TRUE;
}

/* "vdb" or "/dev/vdb" on bus virtio (vd), "sdb" on scsi (sd); letters b..z. */
static gboolean parse_device(const char *text, const char *bus, char **out)
{
    const char *n = g_str_has_prefix(text, "/dev/") ? text + 5 : text;
    const char *prefix = strcmp(bus, "scsi") == 0 ? "sd" : "vd";

    if (strlen(n) != 3 || strncmp(n, prefix, 2) != 0 || n[2] < 'a' || n[2] > 'z')
        return FALSE;
    *out = g_strdup(n);
    return TRUE;
}

/* ------------------------------------------------------------------ entries */

static VnVolumeSpec *parse_entry(json_object *obj, const char *path, gboolean record,
                                 GError **error)
{
    static const char *const keys[] = { "boot_index",
                                        "device_name",
                                        "bus",
                                        "disk_bus",
                                        "volume_id",
                                        "connection_info",
                                        "delete_on_termination",
                                        "source_type",
                                        "destination_type",
                                        "device_type",
                                        "guest_format",
                                        "volume_size",
                                        NULL };
    static const char *const ckeys[] = { "driver_volume_type", "data", "serial", NULL };
    g_autoptr(VnVolumeSpec) v = vn_volume_spec_new();
    g_autofree char *dev = NULL;
    g_autofree char *bus = NULL;
    g_autofree char *disk_bus = NULL;
    g_autofree char *type = NULL;
    g_autofree char *serial = NULL;
    g_autofree char *src = NULL;
    g_autofree char *dst = NULL;
    g_autofree char *devtype = NULL;
    g_autofree char *gfmt = NULL;
    g_autofree char *cpath = g_strdup_printf("%s.connection_info", path);
    g_autofree char *dpath = g_strdup_printf("%s.connection_info.data", path);
    json_object *ci, *data, *bi;
    gint64 size;

    if (!vn_json_expect_object(obj, path, keys, error) ||
        !vn_json_get_string(obj, path, "volume_id", TRUE, 1, 64, &v->volume_id, error) ||
        !vn_json_get_string(obj, path, "device_name", FALSE, 1, 16, &dev, error) ||
        !vn_json_get_string(obj, path, "bus", FALSE, 1, 16, &bus, error) ||
        !vn_json_get_string(obj, path, "disk_bus", FALSE, 1, 16, &disk_bus, error) ||
        !vn_json_get_bool(obj, path, "delete_on_termination", FALSE, &v->delete_on_termination,
                          error) ||
        !vn_json_get_string(obj, path, "source_type", FALSE, 1, 16, &src, error) ||
        !vn_json_get_string(obj, path, "destination_type", FALSE, 1, 16, &dst, error) ||
        !vn_json_get_string(obj, path, "device_type", FALSE, 1, 16, &devtype, error) ||
        !vn_json_get_string(obj, path, "guest_format", FALSE, 1, 16, &gfmt, error) ||
        !vn_json_get_int(obj, path, "volume_size", FALSE, 0, G_MAXINT32, 0, &size, error))
        return NULL;
    if (!id_ok(v->volume_id)) {
        vn_api_invalid(error, "%s.volume_id: only letters, digits and '-'", path);
        return NULL;
    }
    if ((src && strcmp(src, "volume") != 0) || (dst && strcmp(dst, "volume") != 0)) {
        vn_api_invalid(error, "%s: only source_type and destination_type 'volume' are served",
                       path);
        return NULL;
    }
    if (devtype && strcmp(devtype, "disk") != 0) {
        vn_api_invalid(error, "%s.device_type: '%s' is not supported (disk only)", path, devtype);
        return NULL;
    }
    bi = vn_json_member(obj, "boot_index");
    if (bi) {
        if (!json_object_is_type(bi, json_type_int) || json_object_get_int64(bi) < -1 ||
            json_object_get_int64(bi) > VN_VOLUMES_MAX) {
            vn_api_invalid(error, "%s.boot_index: expected an integer -1..%d or null", path,
                           VN_VOLUMES_MAX);
            return NULL;
        }
        v->boot_index = (int)json_object_get_int64(bi);
        if (v->boot_index > 0)
            v->boot_index = -1; /* a volume after the first boot device is an ordinary disk */
    }
    if (bus && disk_bus && strcmp(bus, disk_bus) != 0) {
        vn_api_invalid(error, "%s: bus and disk_bus disagree", path);
        return NULL;
    }
    v->bus = g_strdup(bus ? bus : disk_bus ? disk_bus : "virtio");
    if (strcmp(v->bus, "virtio") != 0 && strcmp(v->bus, "scsi") != 0) {
        vn_api_invalid(error, "%s.bus: '%s' is not virtio or scsi", path, v->bus);
        return NULL;
    }
    if (dev && !parse_device(dev, v->bus, &v->device_name)) {
        vn_api_invalid(error, "%s.device_name: '%s' is not a %s disk name (%s[b-z])", path, dev,
                       v->bus, strcmp(v->bus, "scsi") == 0 ? "sd" : "vd");
        return NULL;
    }
    if (v->device_name && v->boot_index == 0 && strcmp(v->device_name + 2, "a") != 0)
        g_clear_pointer(&v->device_name, g_free); /* the boot volume is always the first disk */
    if (v->device_name && v->boot_index != 0 && v->device_name[2] == 'a') {
        vn_api_invalid(error, "%s.device_name: %s is the boot disk", path, v->device_name);
        return NULL;
    }
    ci = vn_json_member(obj, "connection_info");
    if (!ci) {
        vn_api_invalid(error, "%s: missing", cpath);
        return NULL;
    }
    if (!vn_json_expect_object(ci, cpath, ckeys, error) ||
        !vn_json_get_string(ci, cpath, "driver_volume_type", TRUE, 1, 32, &type, error) ||
        !vn_json_get_string(ci, cpath, "serial", FALSE, 1, 64, &serial, error))
        return NULL;
    if (serial && strcmp(serial, v->volume_id) != 0) {
        vn_api_invalid(error, "%s.serial: '%s' is not the volume_id", cpath, serial);
        return NULL;
    }
    data = vn_json_member(ci, "data");
    if (!data) {
        vn_api_invalid(error, "%s: missing", dpath);
        return NULL;
    }
    if (strcmp(type, "nfs") == 0) {
        v->conn.type = VN_VOL_NFS;
        if (!parse_nfs(data, dpath, v->volume_id, &v->conn, error))
            return NULL;
    } else if (strcmp(type, "iscsi") == 0) {
        v->conn.type = VN_VOL_ISCSI;
        if (!parse_iscsi(data, dpath, v->volume_id, record, &v->conn, error))
            return NULL;
    } else {
        vn_api_invalid(error, "%s.driver_volume_type: '%s' is not served (nfs, iscsi)", cpath,
                       type);
        return NULL;
    }
    return g_steal_pointer(&v);
}

VnVolumeSpec *vn_volume_spec_parse(json_object *obj, const char *path, GError **error)
{
    return parse_entry(obj, path, FALSE, error);
}

static GPtrArray *parse_list(json_object *list, const char *path, gboolean record, GError **error)
{
    g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func((GDestroyNotify)vn_volume_spec_free);
    gsize n;
    gboolean boot = FALSE;

    if (!list)
        return g_steal_pointer(&out);
    if (!json_object_is_type(list, json_type_array)) {
        vn_api_invalid(error, "%s: expected a list", path);
        return NULL;
    }
    n = json_object_array_length(list);
    if (n > VN_VOLUMES_MAX) {
        vn_api_invalid(error, "%s: at most %d volumes", path, VN_VOLUMES_MAX);
        return NULL;
    }
    for (gsize i = 0; i < n; i++) {
        g_autofree char *p = g_strdup_printf("%s[%zu]", path, i);
        VnVolumeSpec *v = parse_entry(json_object_array_get_idx(list, i), p, record, error);
        if (!v)
            return NULL;
        g_ptr_array_add(out, v);
        if (v->boot_index == 0) {
            if (boot) {
                vn_api_invalid(error, "%s.boot_index: only one volume can have boot_index 0", p);
                return NULL;
            }
            boot = TRUE;
        }
        for (gsize j = 0; j < i; j++) {
            const VnVolumeSpec *o = g_ptr_array_index(out, j);
            if (strcmp(o->volume_id, v->volume_id) == 0) {
                vn_api_invalid(error, "%s.volume_id: %s is listed twice", p, v->volume_id);
                return NULL;
            }
            if (o->device_name && v->device_name && strcmp(o->device_name, v->device_name) == 0) {
                vn_api_invalid(error, "%s.device_name: %s is listed twice", p, v->device_name);
                return NULL;
            }
        }
    }
    return g_steal_pointer(&out);
}

GPtrArray *vn_volume_specs_parse(json_object *list, const char *path, GError **error)
{
    return parse_list(list, path, FALSE, error);
}

GPtrArray *vn_volume_specs_from_record(json_object *list, const char *path, GError **error)
{
    return parse_list(list, path, TRUE, error);
}

const VnVolumeSpec *vn_volume_specs_boot(const GPtrArray *vols)
{
    for (guint i = 0; vols && i < vols->len; i++) {
        const VnVolumeSpec *v = g_ptr_array_index(vols, i);
        if (v->boot_index == 0)
            return v;
    }
    return NULL;
}

/* ------------------------------------------------------------------ to JSON */

static char *portal_text(const VnIscsiPath *p)
{
    return strchr(p->host, ':') ? g_strdup_printf("[%s]:%d", p->host, p->port)
                                : g_strdup_printf("%s:%d", p->host, p->port);
}

json_object *vn_volume_spec_to_json(const VnVolumeSpec *v)
{
    json_object *o = json_object_new_object();
    json_object *ci = json_object_new_object();
    json_object *d = json_object_new_object();
    const VnConnInfo *c = &v->conn;

    json_object_object_add(o, "volume_id", json_object_new_string(v->volume_id));
    json_object_object_add(o, "boot_index", json_object_new_int(v->boot_index));
    if (v->device_name)
        json_object_object_add(o, "device_name", json_object_new_string(v->device_name));
    json_object_object_add(o, "bus", json_object_new_string(v->bus));
    json_object_object_add(o, "delete_on_termination",
                           json_object_new_boolean(v->delete_on_termination));
    json_object_object_add(ci, "driver_volume_type",
                           json_object_new_string(vn_volume_type_name(c->type)));
    json_object_object_add(d, "access_mode", json_object_new_string(c->read_only ? "ro" : "rw"));
    json_object_object_add(d, "discard", json_object_new_boolean(c->discard));
    if (c->type == VN_VOL_NFS) {
        json_object_object_add(d, "export", json_object_new_string(c->export));
        json_object_object_add(d, "name", json_object_new_string(c->name));
        if (c->options)
            json_object_object_add(d, "options", json_object_new_string(c->options));
        json_object_object_add(d, "format", json_object_new_string(c->format));
    } else {
        const VnIscsiPath *first = g_ptr_array_index(c->paths, 0);
        g_autofree char *fp = portal_text(first);
        json_object_object_add(d, "target_portal", json_object_new_string(fp));
        json_object_object_add(d, "target_iqn", json_object_new_string(first->iqn));
        json_object_object_add(d, "target_lun", json_object_new_int(first->lun));
        if (c->paths->len > 1) {
            json_object *ps = json_object_new_array();
            json_object *is = json_object_new_array();
            json_object *ls = json_object_new_array();
            for (guint i = 0; i < c->paths->len; i++) {
                const VnIscsiPath *p = g_ptr_array_index(c->paths, i);
                char *t = portal_text(p);
                json_object_array_add(ps, json_object_new_string(t));
                g_free(t);
                json_object_array_add(is, json_object_new_string(p->iqn));
                json_object_array_add(ls, json_object_new_int(p->lun));
            }
            json_object_object_add(d, "target_portals", ps);
            json_object_object_add(d, "target_iqns", is);
            json_object_object_add(d, "target_luns", ls);
        }
        if (c->auth_username) {
            json_object_object_add(d, "auth_method", json_object_new_string("CHAP"));
            json_object_object_add(d, "auth_username", json_object_new_string(c->auth_username));
        }
    }
    json_object_object_add(ci, "data", d);
    json_object_object_add(o, "connection_info", ci);
    return o;
}

json_object *vn_volume_specs_to_json(const GPtrArray *vols)
{
    json_object *a = json_object_new_array();

    for (guint i = 0; vols && i < vols->len; i++)
        json_object_array_add(a, vn_volume_spec_to_json(g_ptr_array_index(vols, i)));
    return a;
}
