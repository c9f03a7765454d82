/* storage/volume.c - volume connectors (see volume.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>

#include "storage/stor_error.h"
#include "storage/volume.h"

#define NFS_PORT      2049
#define ISCSI_EXISTS  15 /* iscsiadm: ISCSI_ERR_SESS_EXISTS, already logged in */
#define ISCSI_NO_OBJS 21 /* iscsiadm: ISCSI_ERR_NO_OBJS_FOUND */
#define PROBE_BYTES   "4096"
#define USE_FILE_MAX  4096
#define UDEV_WAIT_S   10 /* for the links udev makes for a new device */

struct VnVolumes {
    VnVolumesConfig cfg; /* immutable */
    GMutex lock;         /* serialises connects, disconnects and sweeps (host-wide counts) */
};

void vn_volume_disk_clear(VnVolumeDisk *d)
{
    g_free(d->path);
    g_free(d->protocol);
    g_free(d->name);
    g_free(d->host);
    g_free(d->initiator);
    g_free(d->auth_username);
    g_free(d->format);
    g_free(d->health_key);
    memset(d, 0, sizeof(*d));
}

VnVolumes *vn_volumes_new(const VnVolumesConfig *cfg, GError **error)
{
    VnVolumes *v = g_new0(VnVolumes, 1);

    v->cfg = *cfg;
    v->cfg.state_dir = g_strdup(cfg->state_dir);
    v->cfg.nfs_mount_point_base = g_strdup(cfg->nfs_mount_point_base);
    v->cfg.nfs_mount_options =
        g_strdup(cfg->nfs_mount_options && *cfg->nfs_mount_options ? cfg->nfs_mount_options : NULL);
    v->cfg.initiator_name = g_strdup(cfg->initiator_name);
    v->cfg.sys_root = g_strdup(cfg->sys_root && *cfg->sys_root ? cfg->sys_root : "/");
    if (v->cfg.command_timeout <= 0)
        v->cfg.command_timeout = 60;
    if (v->cfg.attach_timeout <= 0)
        v->cfg.attach_timeout = 30;
    if (v->cfg.attempts <= 0)
        v->cfg.attempts = 3;
    g_mutex_init(&v->lock);
    for (const char *sub = "nfs"; sub; sub = strcmp(sub, "nfs") == 0 ? "iscsi" : NULL) {
        g_autofree char *d = g_build_filename(v->cfg.state_dir, sub, NULL);
        if (g_mkdir_with_parents(d, 0700) != 0) {
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "creating %s: %s", d,
                        g_strerror(errno));
            vn_volumes_free(v);
            return NULL;
        }
    }
    return v;
}

void vn_volumes_free(VnVolumes *v)
{
    if (!v)
        return;
    g_free(v->cfg.state_dir);
    g_free(v->cfg.nfs_mount_point_base);
    g_free(v->cfg.nfs_mount_options);
    g_free(v->cfg.initiator_name);
    g_free(v->cfg.sys_root);
    g_mutex_clear(&v->lock);
    g_free(v);
}

/* ------------------------------------------------------------------ helpers */

/* Runs @argv with the configured runner; *@status its exit status. */
static gboolean run_status(VnVolumes *v, const char *const *argv, char **out, int *status,
                           GError **error)
{
    g_autofree char *err = NULL;
    gboolean ok;

    if (v->cfg.run)
        ok = v->cfg.run(argv, v->cfg.command_timeout, out, &err, status, v->cfg.run_data, error);
    else
        ok = vn_stor_run_status(argv, v->cfg.command_timeout, NULL, out, &err, status, error);
    if (ok && *status != 0 && err && *err)
        g_debug("%s %s: exit %d: %s", argv[0], argv[1] ? argv[1] : "", *status, g_strstrip(err));
    return ok;
}

/* Runs @argv; a status outside @ok_status (0-terminated list, 0 always accepted) fails. */
static gboolean run_ok(VnVolumes *v, const char *const *argv, const int *ok_status, char **out,
                       GError **error)
{
    g_autofree char *o = NULL;
    int status = 0;

    if (!run_status(v, argv, &o, &status, error))
        return FALSE;
    for (const int *s = ok_status; status != 0 && s && *s; s++) {
        if (*s == status)
            status = 0;
    }
    if (status != 0) {
        /* the command as far as its target (a secret only ever comes later, after -v) */
        g_autoptr(GString) cmd = g_string_new(argv[0]);
        for (int i = 1; argv[i] && i < 7 && strcmp(argv[i - 1], "-v") != 0; i++)
            g_string_append_printf(cmd, " %s", argv[i]);
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL, "%s failed (exit %d)", cmd->str,
                    status);
        return FALSE;
    }
    if (out)
        *out = g_steal_pointer(&o);
    return TRUE;
}

static char *sys_path(VnVolumes *v, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static char *sys_path(VnVolumes *v, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *rel = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    return g_build_filename(v->cfg.sys_root, rel, NULL);
}

static char *read_trimmed(const char *path)
{
    char *text = NULL;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return NULL;
    return g_strstrip(text);
}

static gboolean write_text(const char *path, const char *text, GError **error)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    gssize n;

    if (fd < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "opening %s: %s", path,
                    g_strerror(errno));
        return FALSE;
    }
    n = write(fd, text, strlen(text));
    if (n < 0 || (gsize)n != strlen(text)) {
        int e = errno;
        close(fd);
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "writing '%s' to %s: %s", text, path,
                    g_strerror(e));
        return FALSE;
    }
    close(fd);
    return TRUE;
}

static char *hash_key(const char *text)
{
    g_autofree char *h = g_compute_checksum_for_string(G_CHECKSUM_SHA256, text, -1);

    return g_strndup(h, 32);
}

/* Creates @dir/@name (0600) holding @content, durably. */
static gboolean use_add(const char *dir, const char *name, const char *content, GError **error)
{
    g_autofree char *path = g_build_filename(dir, name, NULL);

    if (g_mkdir_with_parents(dir, 0700) != 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "creating %s: %s", dir,
                    g_strerror(errno));
        return FALSE;
    }
    if (!g_file_set_contents_full(path, content, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, error)) {
        g_prefix_error(error, "recording the use %s: ", path);
        return FALSE;
    }
    return TRUE;
}

/* The volume ids (file names not starting with '.') in @dir. */
static GPtrArray *uses_in(const char *dir)
{
    GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *n;

    while (d && (n = g_dir_read_name(d))) {
        if (n[0] != '.')
            g_ptr_array_add(out, g_strdup(n));
    }
    return out;
}

/* TRUE when @mnt is a mount point in <sys_root>/proc/self/mountinfo. */
static gboolean is_mounted(VnVolumes *v, const char *mnt)
{
    g_autofree char *info = sys_path(v, "proc/self/mountinfo");
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents(info, &text, NULL, NULL))
        return FALSE;
    lines = g_strsplit(text, "\n", -1);
    for (char **l = lines; *l; l++) {
        g_auto(GStrv) f = g_strsplit(*l, " ", 6);
        if (g_strv_length(f) < 5)
            continue;
        /* mountinfo escapes space, tab, newline and backslash as octal */
        g_autofree char *p = g_strcompress(f[4]);
        if (strcmp(p, mnt) == 0)
            return TRUE;
    }
    return FALSE;
}

/* A timed read of the first block of @path with O_DIRECT, in a child process (a hung NFS
 * server or dead path blocks the reader, never the agent). */
static gboolean probe_read(VnVolumes *v, const char *path, GError **error)
{
    g_autofree char *arg = g_strdup_printf("if=%s", path);
    const char *argv[] = { "dd",           arg, "of=/dev/null", "bs=" PROBE_BYTES, "count=1",
                           "iflag=direct", NULL };

    return run_ok(v, argv, NULL, NULL, error);
}

/* A TCP connection to @host:@port within the command timeout. */
static gboolean probe_tcp(VnVolumes *v, const char *host, int port, GError **error)
{
    g_autoptr(GSocketClient) c = g_socket_client_new();
    g_autoptr(GSocketConnection) conn = NULL;
    g_autoptr(GError) e = NULL;

    g_socket_client_set_timeout(c, (guint)MIN(v->cfg.command_timeout, 10));
    conn = g_socket_client_connect_to_host(c, host, (guint16)port, NULL, &e);
    if (!conn) {
        g_set_error(error, VN_STOR_ERROR,
                    g_error_matches(e, G_IO_ERROR, G_IO_ERROR_TIMED_OUT) ? VN_STOR_ERROR_TIMEOUT
                                                                         : VN_STOR_ERROR_IO,
                    "%s:%d does not answer: %s", host, port, e->message);
        return FALSE;
    }
    return TRUE;
}

/* ------------------------------------------------------------------ NFS, kernel */

char *vn_volumes_nfs_mount_point(VnVolumes *v, const char *export)
{
    g_autofree char *key = hash_key(export);

    return g_build_filename(v->cfg.nfs_mount_point_base, key, NULL);
}

static char *nfs_uses_dir(VnVolumes *v, const char *export)
{
    g_autofree char *key = hash_key(export);

    return g_build_filename(v->cfg.state_dir, "nfs", key, NULL);
}

static gboolean options_pin_version(const char *opts)
{
    g_auto(GStrv) parts = g_strsplit(opts ? opts : "", ",", -1);

    for (char **p = parts; *p; p++) {
        if (g_str_has_prefix(*p, "vers=") || g_str_has_prefix(*p, "nfsvers="))
            return TRUE;
    }
    return FALSE;
}

static gboolean nfs_mount(VnVolumes *v, const VnVolumeRequest *r, const char *mnt, GError **error)
{
    g_autoptr(GString) opts = g_string_new(NULL);
    static const char *const versions[] = { "4.2", "4.1", "3", NULL };
    g_autoptr(GString) tried = g_string_new(NULL);

    if (v->cfg.nfs_mount_options)
        g_string_append(opts, v->cfg.nfs_mount_options);
    if (r->options) {
        if (opts->len)
            g_string_append_c(opts, ',');
        g_string_append(opts, r->options);
    }
    if (options_pin_version(opts->str)) {
        const char *argv[] = { "mount", "-t", "nfs", "-o", opts->str, r->export, mnt, NULL };
        return run_ok(v, argv, NULL, NULL, error);
    }
    /* the newest version the server speaks, as os-brick does */
    for (const char *const *ver = versions; *ver; ver++) {
        g_autofree char *o = opts->len ? g_strdup_printf("vers=%s,%s", *ver, opts->str)
                                       : g_strdup_printf("vers=%s", *ver);
        const char *argv[] = { "mount", "-t", "nfs", "-o", o, r->export, mnt, NULL };
        g_autoptr(GError) e = NULL;
        if (run_ok(v, argv, NULL, NULL, &e)) {
            g_message("mounted %s at %s (NFS %s)", r->export, mnt, *ver);
            return TRUE;
        }
        g_string_append_printf(tried, "%s%s: %s", tried->len ? "; " : "", *ver, e->message);
    }
    g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL,
                "mounting %s failed with NFS 4.2, 4.1 and 3 (%s)", r->export, tried->str);
    return FALSE;
}

static gboolean nfs_kernel_connect(VnVolumes *v, const VnVolumeRequest *r, VnVolumeDisk *out,
                                   GError **error)
{
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, r->export);
    g_autofree char *uses = nfs_uses_dir(v, r->export);
    g_autofree char *use = g_build_filename(uses, r->volume_id, NULL);
    gboolean had_use = g_file_test(use, G_FILE_TEST_EXISTS);

    if (g_mkdir_with_parents(mnt, 0755) != 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "creating %s: %s", mnt,
                    g_strerror(errno));
        return FALSE;
    }
    /* the use first: a crash between the two leaves a use the sweep drops, never a mount
     * nobody counts */
    if (!had_use && !use_add(uses, r->volume_id, r->export, error))
        return FALSE;
    if (!is_mounted(v, mnt)) {
        gboolean ok = FALSE;
        for (int i = 0; i < v->cfg.attempts && !ok; i++) {
            g_autoptr(GError) e = NULL;
            ok = nfs_mount(v, r, mnt, i + 1 == v->cfg.attempts ? error : &e);
            if (!ok && i + 1 < v->cfg.attempts)
                g_usleep(G_USEC_PER_SEC);
        }
        if (!ok) {
            g_autoptr(GPtrArray) left = NULL;
            if (!had_use)
                g_unlink(use);
            left = uses_in(uses);
            if (left->len == 0) {
                g_rmdir(uses);
                g_rmdir(mnt);
            }
            return FALSE;
        }
    }
    out->kind = VN_VOL_DISK_FILE;
    out->path = g_build_filename(mnt, r->name, NULL);
    out->format = g_strdup(r->format);
    out->health_key = g_strdup_printf("nfs:%s", r->export);
    return TRUE;
}

/* Unmounts @export's mount point when no use is left; a busy mount stays (the sweep tries
 * again). */
static gboolean nfs_release(VnVolumes *v, const char *export_key_dir, const char *mnt,
                            GError **error)
{
    g_autoptr(GPtrArray) left = uses_in(export_key_dir);

    if (left->len > 0)
        return TRUE;
    if (is_mounted(v, mnt)) {
        const char *argv[] = { "umount", mnt, NULL };
        if (!run_ok(v, argv, NULL, NULL, error)) {
            g_prefix_error(error, "the last volume left, but: ");
            return FALSE;
        }
        g_message("unmounted %s (no volume uses it)", mnt);
    }
    g_rmdir(mnt);
    g_rmdir(export_key_dir);
    return TRUE;
}

static gboolean nfs_kernel_disconnect(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, r->export);
    g_autofree char *uses = nfs_uses_dir(v, r->export);
    g_autofree char *use = g_build_filename(uses, r->volume_id, NULL);

    g_unlink(use);
    return nfs_release(v, uses, mnt, error);
}

static gboolean nfs_kernel_extend(VnVolumes *v, const VnVolumeRequest *r, guint64 *size,
                                  GError **error)
{
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, r->export);
    g_autofree char *file = g_build_filename(mnt, r->name, NULL);
    GStatBuf st;

    if (g_stat(file, &st) != 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "%s: %s", file, g_strerror(errno));
        return FALSE;
    }
    *size = (guint64)st.st_size;
    return TRUE;
}

static gboolean nfs_kernel_check(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, r->export);
    g_autofree char *file = g_build_filename(mnt, r->name, NULL);

    return probe_read(v, file, error);
}

/* ------------------------------------------------------------------ NFS, QEMU */

static gboolean nfs_qemu_connect(VnVolumes *v, const VnVolumeRequest *r, VnVolumeDisk *out,
                                 GError **error)
{
    (void)v;
    (void)error;
    out->kind = VN_VOL_DISK_NETWORK;
    out->protocol = g_strdup("nfs");
    out->name = g_build_filename(r->path, r->name, NULL);
    out->host = g_strdup(r->server);
    out->format = g_strdup(r->format);
    out->health_key = g_strdup_printf("nfs:%s", r->export);
    return TRUE;
}

static gboolean nothing_to_disconnect(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    (void)v;
    (void)r;
    (void)error;
    return TRUE;
}

static gboolean no_local_size(VnVolumes *v, const VnVolumeRequest *r, guint64 *size, GError **error)
{
    (void)v;
    (void)size;
    g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID,
                "volume %s is served by QEMU's own client: its size is QEMU's to read",
                r->volume_id);
    return FALSE;
}

/* The NFS server answers: an ONC RPC NULL call to its NFS program (100003, version 3) over
 * TCP, answered within the command timeout (at most 10 s).  A stopped server still
 * accepts connections (the kernel does): only an RPC reply proves it serves. */
static gboolean nfs_qemu_check(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    g_autoptr(GSocketClient) c = g_socket_client_new();
    g_autoptr(GSocketConnection) conn = NULL;
    g_autoptr(GError) e = NULL;
    guint32 xid = g_random_int();
    /* record mark (last fragment, 40 bytes), xid, CALL, RPC 2, NFS, v3, NULL, AUTH_NONE x2 */
    guint32 call[11] = { 0x80000000u | 40, xid, 0, 2, 100003, 3, 0, 0, 0, 0, 0 };
    guint32 reply[6];
    gsize got = 0;
    guint timeout = (guint)MIN(v->cfg.command_timeout, 10);

    for (gsize i = 0; i < G_N_ELEMENTS(call); i++)
        call[i] = GUINT32_TO_BE(call[i]);
    g_socket_client_set_timeout(c, timeout);
    conn = g_socket_client_connect_to_host(c, r->server, NFS_PORT, NULL, &e);
    if (conn) {
        GSocket *sock = g_socket_connection_get_socket(conn);
        g_socket_set_timeout(sock, timeout);
        if (g_output_stream_write_all(g_io_stream_get_output_stream(G_IO_STREAM(conn)), call,
                                      sizeof(call), NULL, NULL, &e))
            g_input_stream_read_all(g_io_stream_get_input_stream(G_IO_STREAM(conn)), reply,
                                    sizeof(reply), &got, NULL, &e);
    }
    if (!e && got == sizeof(reply) && reply[1] == GUINT32_TO_BE(xid) &&
        reply[2] == GUINT32_TO_BE(1) && reply[3] == 0)
        return TRUE; /* a REPLY, MSG_ACCEPTED */
    g_set_error(error, VN_STOR_ERROR,
                e && g_error_matches(e, G_IO_ERROR, G_IO_ERROR_TIMED_OUT) ? VN_STOR_ERROR_TIMEOUT
                                                                          : VN_STOR_ERROR_IO,
                "NFS server %s does not answer: %s", r->server, e ? e->message : "no RPC reply");
    return FALSE;
}

/* ------------------------------------------------------------------ iSCSI, kernel */

typedef struct {
    VnVolumes *v;
    const VnVolumeRequest *r;
    const VnVolPath *p;
    char *device; /* "sdX" once found */
    int sid;
    GError *error;
} PathJob;

static char *portal_arg(const VnVolPath *p)
{
    return strchr(p->host, ':') ? g_strdup_printf("[%s]:%d", p->host, p->port)
                                : g_strdup_printf("%s:%d", p->host, p->port);
}

static char *session_key(const VnVolPath *p)
{
    g_autofree char *portal = portal_arg(p);
    g_autofree char *t = g_strdup_printf("%s,%s", portal, p->iqn);

    return hash_key(t);
}

static char *session_dir(VnVolumes *v, const VnVolPath *p)
{
    g_autofree char *key = session_key(p);

    return g_build_filename(v->cfg.state_dir, "iscsi", key, NULL);
}

/* The session id of @p from `iscsiadm -m session`, or 0. */
static int find_session(VnVolumes *v, const VnVolPath *p)
{
    const char *argv[] = { "iscsiadm", "-m", "session", NULL };
    static const int ok[] = { ISCSI_NO_OBJS, 0 };
    g_autofree char *out = NULL;
    g_autofree char *portal = portal_arg(p);
    g_auto(GStrv) lines = NULL;

    if (!run_ok(v, argv, ok, &out, NULL) || !out)
        return 0;
    lines = g_strsplit(out, "\n", -1);
    /* "tcp: [3] 10.77.0.1:3260,1 iqn.2024-01.test.nas:lun1 (non-flash)" */
    for (char **l = lines; *l; l++) {
        g_auto(GStrv) f = g_strsplit_set(g_strstrip(*l), " ", -1);
        if (g_strv_length(f) < 4 || f[1][0] != '[')
            continue;
        char *comma = strrchr(f[2], ',');
        if (comma)
            *comma = '\0';
        if (strcmp(f[2], portal) == 0 && strcmp(f[3], p->iqn) == 0)
            return atoi(f[1] + 1);
    }
    return 0;
}

/* The H:C:T of session @sid's target from sysfs; FALSE when it has none yet. */
static gboolean session_hct(VnVolumes *v, int sid, int *h, int *c, int *t)
{
    g_autofree char *dir = sys_path(v, "sys/class/iscsi_session/session%d/device", sid);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *n;

    while (d && (n = g_dir_read_name(d))) {
        if (sscanf(n, "target%d:%d:%d", h, c, t) == 3)
            return TRUE;
    }
    return FALSE;
}

/* The block device ("sdX") of LUN @lun on session @sid, or NULL. */
static char *session_lun_device(VnVolumes *v, int sid, int lun)
{
    int h, c, t;
    g_autofree char *dir = NULL;
    g_autoptr(GDir) d = NULL;
    const char *n;

    if (!session_hct(v, sid, &h, &c, &t))
        return NULL;
    dir = sys_path(v, "sys/class/iscsi_session/session%d/device/target%d:%d:%d/%d:%d:%d:%d/block",
                   sid, h, c, t, h, c, t, lun);
    d = g_dir_open(dir, 0, NULL);
    while (d && (n = g_dir_read_name(d))) {
        if (n[0] != '.')
            return g_strdup(n);
    }
    return NULL;
}

/* How many LUN devices session @sid has (for "does another volume use it"). */
static guint session_lun_count(VnVolumes *v, int sid)
{
    int h, c, t;
    g_autofree char *dir = NULL;
    g_autoptr(GDir) d = NULL;
    g_autofree char *prefix = NULL;
    const char *n;
    guint count = 0;

    if (!session_hct(v, sid, &h, &c, &t))
        return 0;
    dir = sys_path(v, "sys/class/iscsi_session/session%d/device/target%d:%d:%d", sid, h, c, t);
    prefix = g_strdup_printf("%d:%d:%d:", h, c, t);
    d = g_dir_open(dir, 0, NULL);
    while (d && (n = g_dir_read_name(d))) {
        if (g_str_has_prefix(n, prefix))
            count++;
    }
    return count;
}

/* A targeted scan of @lun on session @sid (os-brick's: never a wildcard scan of the host,
 * which would bring in every LUN the target maps). */
static void scan_lun(VnVolumes *v, int sid, int lun)
{
    int h, c, t;
    g_autofree char *scan = NULL;
    g_autofree char *text = NULL;
    g_autoptr(GError) e = NULL;

    if (!session_hct(v, sid, &h, &c, &t)) {
        /* no target seen yet: the host of the session, any channel and target */
        g_autofree char *dev = sys_path(v, "sys/class/iscsi_session/session%d/device", sid);
        g_autofree char *real = realpath(dev, NULL);
        if (!real || !strstr(real, "/host") || sscanf(strstr(real, "/host"), "/host%d", &h) != 1)
            return;
        text = g_strdup_printf("- - %d", lun);
    } else {
        text = g_strdup_printf("%d %d %d", c, t, lun);
    }
    scan = sys_path(v, "sys/class/scsi_host/host%d/scan", h);
    if (!write_text(scan, text, &e))
        g_debug("scan: %s", e->message);
}

static gboolean iscsiadm_node(VnVolumes *v, const VnVolPath *p, const char *const *extra,
                              const int *ok, GError **error)
{
    g_autofree char *portal = portal_arg(p);
    g_autoptr(GPtrArray) argv = g_ptr_array_new();

    g_ptr_array_add(argv, (gpointer) "iscsiadm");
    g_ptr_array_add(argv, (gpointer) "-m");
    g_ptr_array_add(argv, (gpointer) "node");
    g_ptr_array_add(argv, (gpointer) "-T");
    g_ptr_array_add(argv, (gpointer)p->iqn);
    g_ptr_array_add(argv, (gpointer) "-p");
    g_ptr_array_add(argv, portal);
    for (const char *const *e = extra; *e; e++)
        g_ptr_array_add(argv, (gpointer)*e);
    g_ptr_array_add(argv, NULL);
    return run_ok(v, (const char *const *)argv->pdata, ok, NULL, error);
}

static gboolean node_update(VnVolumes *v, const VnVolPath *p, const char *key, const char *value,
                            GError **error)
{
    const char *extra[] = { "--op", "update", "-n", key, "-v", value, NULL };

    return iscsiadm_node(v, p, extra, NULL, error);
}

/* Login to one portal and find the LUN's device: runs in its own thread per portal. */
static gpointer path_connect(gpointer data)
{
    PathJob *j = data;
    VnVolumes *v = j->v;
    const VnVolumeRequest *r = j->r;
    static const int exists[] = { ISCSI_EXISTS, 0 };
    const char *new_args[] = { "--interface", "default", "--op", "new", NULL };
    const char *login[] = { "--login", NULL };
    gint64 deadline;

    if (!iscsiadm_node(v, j->p, new_args, exists, &j->error))
        return NULL;
    /* only the LUNs asked for appear (the targeted scan below), not every LUN the target
     * maps to this initiator; an iscsiadm without the setting scans them all */
    {
        g_autoptr(GError) e = NULL;
        if (!node_update(v, j->p, "node.session.scan", "manual", &e))
            g_debug("%s", e->message);
    }
    if (r->chap_username) {
        if (!node_update(v, j->p, "node.session.auth.authmethod", "CHAP", &j->error) ||
            !node_update(v, j->p, "node.session.auth.username", r->chap_username, &j->error) ||
            (r->chap_password &&
             !node_update(v, j->p, "node.session.auth.password", r->chap_password, &j->error)))
            return NULL;
    }
    for (int i = 0; i < v->cfg.attempts; i++) {
        g_clear_error(&j->error);
        if (iscsiadm_node(v, j->p, login, exists, &j->error))
            break;
        g_usleep(G_USEC_PER_SEC * (i + 1));
    }
    if (j->error)
        return NULL;
    if (!node_update(v, j->p, "node.startup", "automatic", &j->error))
        return NULL;
    j->sid = find_session(v, j->p);
    if (!j->sid) {
        g_set_error(&j->error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL,
                    "logged in to %s:%d but iscsiadm shows no session", j->p->host, j->p->port);
        return NULL;
    }
    deadline = g_get_monotonic_time() + (gint64)v->cfg.attach_timeout * G_USEC_PER_SEC;
    for (int tick = 0;; tick++) {
        if (tick % 20 == 0)
            scan_lun(v, j->sid, j->p->lun); /* again every 2 s */
        j->device = session_lun_device(v, j->sid, j->p->lun);
        if (j->device || g_get_monotonic_time() > deadline)
            break;
        g_usleep(G_USEC_PER_SEC / 10);
    }
    if (!j->device)
        g_set_error(&j->error, VN_STOR_ERROR, VN_STOR_ERROR_TIMEOUT,
                    "LUN %d of %s on %s:%d did not appear within %d s", j->p->lun, j->p->iqn,
                    j->p->host, j->p->port, v->cfg.attach_timeout);
    return NULL;
}

/* The WWID of /dev/@dev as multipath names it (scsi_id's page 0x83 identifier), or the
 * kernel's own from sysfs. */
static char *device_wwid(VnVolumes *v, const char *dev)
{
    g_autofree char *node = sys_path(v, "dev/%s", dev);
    g_autofree char *darg = g_strdup_printf("--device=%s", node);
    const char *argv[] = { "/lib/udev/scsi_id", "--page", "0x83", "--whitelisted", darg, NULL };
    g_autofree char *out = NULL;

    if (run_ok(v, argv, NULL, &out, NULL) && out && *g_strstrip(out))
        return g_steal_pointer(&out);
    g_autofree char *f = sys_path(v, "sys/block/%s/device/wwid", dev);
    return read_trimmed(f);
}

/* The dm device ("dm-N") of the multipath map of @wwid, its map name in *@name. */
static char *find_map(VnVolumes *v, const char *wwid, char **name)
{
    g_autofree char *block = sys_path(v, "sys/block");
    g_autoptr(GDir) d = g_dir_open(block, 0, NULL);
    g_autofree char *want = g_strdup_printf("mpath-%s", wwid);
    const char *n;

    while (d && (n = g_dir_read_name(d))) {
        if (!g_str_has_prefix(n, "dm-"))
            continue;
        g_autofree char *uf = sys_path(v, "sys/block/%s/dm/uuid", n);
        g_autofree char *uuid = read_trimmed(uf);
        if (uuid && strcmp(uuid, want) == 0) {
            if (name) {
                g_autofree char *nf = sys_path(v, "sys/block/%s/dm/name", n);
                *name = read_trimmed(nf);
            }
            return g_strdup(n);
        }
    }
    return NULL;
}

/* Deletes the SCSI device @dev (after its buffers are flushed). */
static void delete_device(VnVolumes *v, const char *dev)
{
    g_autofree char *node = sys_path(v, "dev/%s", dev);
    g_autofree char *del = sys_path(v, "sys/block/%s/device/delete", dev);
    const char *flush[] = { "blockdev", "--flushbufs", node, NULL };
    g_autoptr(GError) e = NULL;

    if (!run_ok(v, flush, NULL, NULL, &e)) {
        g_debug("%s", e->message);
        g_clear_error(&e);
    }
    if (!write_text(del, "1", &e))
        g_warning("deleting the path %s: %s", dev, e->message);
}

static void forget_session_dir(const char *dir)
{
    g_autofree char *tf = g_build_filename(dir, ".target", NULL);

    g_unlink(tf);
    g_rmdir(dir);
}

/* Logs out of @p's session and forgets its node when no recorded use and no LUN device is
 * left on it. */
static void session_release(VnVolumes *v, const VnVolPath *p)
{
    g_autofree char *dir = session_dir(v, p);
    g_autoptr(GPtrArray) uses = uses_in(dir);
    int sid;
    static const int gone[] = { ISCSI_NO_OBJS, 0 };
    const char *logout[] = { "--logout", NULL };
    const char *del[] = { "--op", "delete", NULL };
    g_autoptr(GError) e = NULL;

    if (uses->len > 0)
        return;
    sid = find_session(v, p);
    if (sid && session_lun_count(v, sid) > 0) {
        g_message("session %d (%s on %s:%d) keeps LUNs this agent did not attach: not logged out",
                  sid, p->iqn, p->host, p->port);
        forget_session_dir(dir);
        return;
    }
    if (sid && !iscsiadm_node(v, p, logout, gone, &e)) {
        g_warning("logging out of %s on %s:%d: %s", p->iqn, p->host, p->port, e->message);
        return; /* the record stays, the sweep tries again */
    }
    if (!iscsiadm_node(v, p, del, gone, &e))
        g_debug("%s", e ? e->message : "");
    forget_session_dir(dir);
    if (sid)
        g_message("logged out of %s on %s:%d (no volume uses it)", p->iqn, p->host, p->port);
}

static gboolean multipath_wanted(VnVolumes *v, const VnVolumeRequest *r)
{
    return v->cfg.use_multipath && r->n_paths >= 1;
}

/* Disconnects the devices of @r on the paths @mask marks (NULL: none; the sweep finds
 * them by WWID): map flushed (queueing off first, so a dead path cannot hang the flush),
 * then every path deleted.  @wwid may be NULL when unknown. */
static gboolean iscsi_remove_devices(VnVolumes *v, const VnVolumeRequest *r, const gboolean *mask,
                                     const char *wwid, GError **error)
{
    g_autofree char *map_name = NULL;
    g_autofree char *dm = wwid ? find_map(v, wwid, &map_name) : NULL;

    if (dm && map_name) {
        const char *noq[] = { "multipathd", "disablequeueing", "map", map_name, NULL };
        const char *flush[] = { "multipath", "-f", map_name, NULL };
        g_autoptr(GError) e = NULL;
        if (!run_ok(v, noq, NULL, NULL, &e))
            g_debug("%s", e->message);
        gboolean ok = FALSE;
        for (int i = 0; i < v->cfg.attempts && !ok; i++) {
            g_clear_error(&e);
            ok = run_ok(v, flush, NULL, NULL, &e);
            if (!ok && i + 1 < v->cfg.attempts)
                g_usleep(G_USEC_PER_SEC);
        }
        if (!ok) {
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL,
                        "the multipath map %s of volume %s cannot be flushed (%s): its paths and "
                        "sessions are kept",
                        map_name, r->volume_id, e->message);
            return FALSE;
        }
    }
    for (guint i = 0; mask && i < r->n_paths; i++) {
        if (!mask[i])
            continue;
        int sid = find_session(v, &r->paths[i]);
        g_autofree char *dev = sid ? session_lun_device(v, sid, r->paths[i].lun) : NULL;
        if (dev)
            delete_device(v, dev);
    }
    return TRUE;
}

static gboolean iscsi_kernel_disconnect(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    g_autofree char *wwid = NULL;
    g_autofree gboolean *used = g_new0(gboolean, r->n_paths);
    gboolean any = FALSE;

    /* the paths this volume was connected on, and the WWID the connect recorded (the
     * device may be gone already); a path of another volume is never touched */
    for (guint i = 0; i < r->n_paths; i++) {
        g_autofree char *dir = session_dir(v, &r->paths[i]);
        g_autofree char *use = g_build_filename(dir, r->volume_id, NULL);
        g_autofree char *text = read_trimmed(use);
        used[i] = text != NULL;
        any = any || used[i];
        if (!wwid && text && g_str_has_prefix(text, "wwid="))
            wwid = g_strdup(text + 5);
    }
    if (!any)
        return TRUE;
    if (!iscsi_remove_devices(v, r, used, wwid, error))
        return FALSE;
    for (guint i = 0; i < r->n_paths; i++) {
        if (!used[i])
            continue;
        g_autofree char *dir = session_dir(v, &r->paths[i]);
        g_autofree char *use = g_build_filename(dir, r->volume_id, NULL);
        g_unlink(use);
        session_release(v, &r->paths[i]);
    }
    return TRUE;
}

/* The node a volume's device is given by.  udev makes @stable_rel (a link named after the
 * volume, the same on every host, so a live migration keeps the guest's XML) and @named_rel
 * (NULL: none) a moment after the kernel makes the device: the link is waited for, up to
 * UDEV_WAIT_S within @deadline; without it, @named_rel when it exists, else the kernel's
 * own @kernel_rel (devtmpfs makes it with the device).  Never a node that is not there. */
static char *device_node(VnVolumes *v, const char *stable_rel, const char *named_rel,
                         const char *kernel_rel, gint64 deadline)
{
    g_autofree char *stable = g_build_filename(v->cfg.sys_root, stable_rel, NULL);
    g_autofree char *named = named_rel ? g_build_filename(v->cfg.sys_root, named_rel, NULL) : NULL;
    gint64 start = g_get_monotonic_time();
    gint64 end = MIN(deadline, start + UDEV_WAIT_S * G_USEC_PER_SEC);

    for (;;) {
        if (g_file_test(stable, G_FILE_TEST_EXISTS))
            return g_strconcat("/", stable_rel, NULL);
        if (g_get_monotonic_time() >= end)
            break;
        g_usleep(G_USEC_PER_SEC / 20);
    }
    const char *use = named && g_file_test(named, G_FILE_TEST_EXISTS) ? named_rel : kernel_rel;
    g_warning("/%s did not appear within %.1f s (is udev running?): the device is given as /%s",
              stable_rel, (double)(g_get_monotonic_time() - start) / G_USEC_PER_SEC, use);
    return g_strconcat("/", use, NULL);
}

static gboolean iscsi_kernel_connect(VnVolumes *v, const VnVolumeRequest *r, VnVolumeDisk *out,
                                     GError **error)
{
    g_autofree PathJob *jobs = g_new0(PathJob, r->n_paths);
    g_autofree GThread **threads = g_new0(GThread *, r->n_paths);
    g_autofree char *wwid = NULL;
    g_autofree char *use_text = NULL;
    g_autoptr(GString) failures = g_string_new(NULL);
    guint n_ok = 0;
    gboolean ok = FALSE;
    guint wanted = multipath_wanted(v, r) ? r->n_paths : 1;
    gint64 deadline;

    /* the uses first, so that a crash mid-connect leaves what the sweep undoes */
    for (guint i = 0; i < wanted; i++) {
        g_autofree char *dir = session_dir(v, &r->paths[i]);
        g_autofree char *portal = portal_arg(&r->paths[i]);
        g_autofree char *t = g_strdup_printf("%s\n%s\n", portal, r->paths[i].iqn);
        g_autofree char *tf = g_build_filename(dir, ".target", NULL);
        if (!use_add(dir, r->volume_id, "connecting\n", error) ||
            !g_file_set_contents_full(tf, t, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, error))
            goto undo;
    }
    /* every portal at once: a dead one costs one timeout, not one per portal */
    for (guint i = 0; i < wanted; i++) {
        jobs[i] = (PathJob){ v, r, &r->paths[i], NULL, 0, NULL };
        threads[i] = g_thread_new("iscsi-login", path_connect, &jobs[i]);
    }
    for (guint i = 0; i < wanted; i++) {
        g_thread_join(threads[i]);
        if (jobs[i].device) {
            n_ok++;
        } else {
            g_string_append_printf(failures, "%s%s:%d: %s", failures->len ? "; " : "",
                                   jobs[i].p->host, jobs[i].p->port,
                                   jobs[i].error ? jobs[i].error->message : "no device");
        }
    }
    if (n_ok == 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOOL, "volume %s: no path came up (%s)",
                    r->volume_id, failures->str);
        goto undo;
    }
    if (failures->len)
        g_warning("volume %s: %u of %u paths up; down: %s", r->volume_id, n_ok, wanted,
                  failures->str);
    for (guint i = 0; i < wanted && !wwid; i++) {
        if (jobs[i].device)
            wwid = device_wwid(v, jobs[i].device);
    }
    if (!wwid) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "volume %s: its device has no WWID",
                    r->volume_id);
        goto undo;
    }
    use_text = g_strdup_printf("wwid=%s\n", wwid);
    for (guint i = 0; i < wanted; i++) {
        g_autofree char *dir = session_dir(v, &r->paths[i]);
        if (!use_add(dir, r->volume_id, use_text, error))
            goto undo;
    }
    /* the map and the udev link, waited for within attach_timeout from here */
    deadline = g_get_monotonic_time() + (gint64)v->cfg.attach_timeout * G_USEC_PER_SEC;
    if (multipath_wanted(v, r)) {
        const char *add_wwid[] = { "multipath", "-a", wwid, NULL };
        g_autofree char *dm = NULL;
        g_autofree char *name = NULL;
        if (!run_ok(v, add_wwid, NULL, NULL, error))
            goto undo;
        for (guint i = 0; i < wanted; i++) {
            if (!jobs[i].device)
                continue;
            g_autofree char *node = sys_path(v, "dev/%s", jobs[i].device);
            const char *add_path[] = { "multipathd", "add", "path", node, NULL };
            g_autoptr(GError) e = NULL;
            if (!run_ok(v, add_path, NULL, NULL, &e))
                g_debug("%s", e->message);
        }
        /* multipathd makes the map from the paths it was given; when it has not after a
         * few seconds (no uevents, an older multipathd), the map of this WWID alone is made
         * directly */
        gint64 nudge = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
        gboolean nudged = FALSE;
        while (!(dm = find_map(v, wwid, &name)) && g_get_monotonic_time() < deadline) {
            if (!nudged && g_get_monotonic_time() > nudge) {
                const char *make[] = { "multipath", wwid, NULL };
                g_autoptr(GError) e = NULL;
                if (!run_ok(v, make, NULL, NULL, &e))
                    g_debug("%s", e->message);
                nudged = TRUE;
            }
            g_usleep(G_USEC_PER_SEC / 10);
        }
        if (!dm) {
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TIMEOUT,
                        "volume %s: the multipath map of %s did not appear within %d s",
                        r->volume_id, wwid, v->cfg.attach_timeout);
            goto undo;
        }
        /* the map is made from its first path; the others join it asynchronously: wait
         * for every path that came up (a map short of one is used, and said) */
        {
            g_autofree char *slaves = sys_path(v, "sys/block/%s/slaves", dm);
            guint have = 0;
            for (;;) {
                g_autoptr(GDir) sd = g_dir_open(slaves, 0, NULL);
                have = 0;
                while (sd && g_dir_read_name(sd))
                    have++;
                if (have >= n_ok || g_get_monotonic_time() > deadline)
                    break;
                g_usleep(G_USEC_PER_SEC / 10);
            }
            if (have < n_ok)
                g_warning("volume %s: the map %s has %u of its %u paths", r->volume_id, dm, have,
                          n_ok);
        }
        /* the name udev gives the map is the same on every host (a live migration keeps
         * the guest's XML); the map's own name may differ */
        g_autofree char *stable = g_strdup_printf("dev/disk/by-id/dm-uuid-mpath-%s", wwid);
        g_autofree char *named = name ? g_strdup_printf("dev/mapper/%s", name) : NULL;
        g_autofree char *kernel = g_strdup_printf("dev/%s", dm);
        out->kind = VN_VOL_DISK_BLOCK;
        out->path = device_node(v, stable, named, kernel, deadline);
    } else {
        guint first = 0;
        while (!jobs[first].device)
            first++;
        g_autofree char *portal = portal_arg(jobs[first].p);
        g_autofree char *stable = g_strdup_printf("dev/disk/by-path/ip-%s-iscsi-%s-lun-%d", portal,
                                                  jobs[first].p->iqn, jobs[first].p->lun);
        g_autofree char *kernel = g_strdup_printf("dev/%s", jobs[first].device);
        out->kind = VN_VOL_DISK_BLOCK;
        out->path = device_node(v, stable, NULL, kernel, deadline);
    }
    out->format = g_strdup("raw");
    out->health_key = g_strdup_printf("iscsi:%s", wwid);
    ok = TRUE;
undo:
    for (guint i = 0; i < wanted; i++) {
        g_free(jobs[i].device);
        g_clear_error(&jobs[i].error);
    }
    if (!ok) {
        g_autoptr(GError) e = NULL;
        if (!iscsi_kernel_disconnect(v, r, &e))
            g_warning("undoing the connect of volume %s: %s", r->volume_id, e->message);
    }
    return ok;
}

static gboolean iscsi_kernel_extend(VnVolumes *v, const VnVolumeRequest *r, guint64 *size,
                                    GError **error)
{
    g_autofree char *dev = NULL;

    for (guint i = 0; i < r->n_paths; i++) {
        int sid = find_session(v, &r->paths[i]);
        g_autofree char *d = sid ? session_lun_device(v, sid, r->paths[i].lun) : NULL;
        if (!d)
            continue;
        g_autofree char *rescan = sys_path(v, "sys/block/%s/device/rescan", d);
        g_autoptr(GError) e = NULL;
        if (!write_text(rescan, "1", &e))
            g_debug("%s", e->message);
        if (!dev)
            dev = g_steal_pointer(&d);
    }
    if (!dev) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "volume %s has no path on this host",
                    r->volume_id);
        return FALSE;
    }
    g_autofree char *wwid = device_wwid(v, dev);
    g_autofree char *name = NULL;
    g_autofree char *dm = wwid ? find_map(v, wwid, &name) : NULL;
    if (dm && name) {
        const char *resize[] = { "multipathd", "resize", "map", name, NULL };
        if (!run_ok(v, resize, NULL, NULL, error))
            return FALSE;
    }
    g_autofree char *sf = sys_path(v, "sys/block/%s/size", dm ? dm : dev);
    g_autofree char *sectors = read_trimmed(sf);
    if (!sectors) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "cannot read %s", sf);
        return FALSE;
    }
    *size = g_ascii_strtoull(sectors, NULL, 10) * 512;
    return TRUE;
}

static gboolean iscsi_kernel_check(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    for (guint i = 0; i < r->n_paths; i++) {
        int sid = find_session(v, &r->paths[i]);
        g_autofree char *dev = sid ? session_lun_device(v, sid, r->paths[i].lun) : NULL;
        if (!dev)
            continue;
        g_autofree char *wwid = device_wwid(v, dev);
        g_autofree char *dm = wwid ? find_map(v, wwid, NULL) : NULL;
        g_autofree char *node = sys_path(v, "dev/%s", dm ? dm : dev);
        return probe_read(v, node, error);
    }
    g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "volume %s has no path on this host",
                r->volume_id);
    return FALSE;
}

/* ------------------------------------------------------------------ iSCSI, QEMU */

static gboolean iscsi_qemu_connect(VnVolumes *v, const VnVolumeRequest *r, VnVolumeDisk *out,
                                   GError **error)
{
    const VnVolPath *p = &r->paths[0];

    if (!v->cfg.initiator_name || !*v->cfg.initiator_name) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID,
                    "no iSCSI initiator name is configured ([storage] iscsi_initiator_name)");
        return FALSE;
    }
    if (r->n_paths > 1)
        g_message("volume %s: QEMU's iSCSI initiator uses one path (%s:%d) of %u", r->volume_id,
                  p->host, p->port, r->n_paths);
    out->kind = VN_VOL_DISK_NETWORK;
    out->protocol = g_strdup("iscsi");
    out->name = g_strdup_printf("%s/%d", p->iqn, p->lun);
    out->host = g_strdup(p->host);
    out->port = p->port;
    out->initiator = g_strdup(v->cfg.initiator_name);
    out->auth_username = g_strdup(r->chap_username);
    out->format = g_strdup("raw");
    out->health_key = g_strdup_printf("iscsi:%s", p->iqn);
    return TRUE;
}

static gboolean iscsi_qemu_check(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    return probe_tcp(v, r->paths[0].host, r->paths[0].port, error);
}

/* ------------------------------------------------------------------ the table */

static const VnVolumeConnector connectors[] = {
    { "nfs-kernel", nfs_kernel_connect, nfs_kernel_disconnect, nfs_kernel_extend,
      nfs_kernel_check },
    { "nfs-qemu", nfs_qemu_connect, nothing_to_disconnect, no_local_size, nfs_qemu_check },
    { "iscsi-kernel", iscsi_kernel_connect, iscsi_kernel_disconnect, iscsi_kernel_extend,
      iscsi_kernel_check },
    { "iscsi-qemu", iscsi_qemu_connect, nothing_to_disconnect, no_local_size, iscsi_qemu_check },
};

const VnVolumeConnector *vn_volumes_connector(VnVolumes *v, const VnVolumeRequest *r)
{
    if (r->iscsi)
        return &connectors[v->cfg.iscsi_driver == VN_VOL_DRIVER_QEMU ? 3 : 2];
    return &connectors[v->cfg.nfs_driver == VN_VOL_DRIVER_QEMU ? 1 : 0];
}

static gboolean request_ok(const VnVolumeRequest *r, GError **error)
{
    if (!r->volume_id || (r->iscsi ? r->n_paths == 0 : !r->export || !r->name)) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID, "incomplete volume request");
        return FALSE;
    }
    return TRUE;
}

gboolean vn_volumes_connect(VnVolumes *v, const VnVolumeRequest *r, VnVolumeDisk *out,
                            GError **error)
{
    const VnVolumeConnector *c;
    gboolean ok;

    if (!request_ok(r, error))
        return FALSE;
    c = vn_volumes_connector(v, r);
    g_mutex_lock(&v->lock);
    ok = c->connect(v, r, out, error);
    g_mutex_unlock(&v->lock);
    if (ok) {
        out->read_only = r->read_only;
        out->discard = r->discard;
    } else {
        g_prefix_error(error, "connecting volume %s (%s): ", r->volume_id, c->name);
    }
    return ok;
}

gboolean vn_volumes_disconnect(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    const VnVolumeConnector *c;
    gboolean ok;

    if (!request_ok(r, error))
        return FALSE;
    c = vn_volumes_connector(v, r);
    g_mutex_lock(&v->lock);
    ok = c->disconnect(v, r, error);
    g_mutex_unlock(&v->lock);
    if (!ok)
        g_prefix_error(error, "disconnecting volume %s (%s): ", r->volume_id, c->name);
    return ok;
}

gboolean vn_volumes_check(VnVolumes *v, const VnVolumeRequest *r, GError **error)
{
    /* no lock: a probe may take its whole timeout */
    return request_ok(r, error) && vn_volumes_connector(v, r)->check(v, r, error);
}

gboolean vn_volumes_extend(VnVolumes *v, const VnVolumeRequest *r, guint64 *size, GError **error)
{
    gboolean ok;

    if (!request_ok(r, error))
        return FALSE;
    g_mutex_lock(&v->lock);
    ok = vn_volumes_connector(v, r)->extend(v, r, size, error);
    g_mutex_unlock(&v->lock);
    return ok;
}

/* ------------------------------------------------------------------ sweep */

GPtrArray *vn_volumes_recorded(VnVolumes *v)
{
    GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GHashTable) seen = g_hash_table_new(g_str_hash, g_str_equal);

    for (const char *sub = "nfs"; sub; sub = strcmp(sub, "nfs") == 0 ? "iscsi" : NULL) {
        g_autofree char *dir = g_build_filename(v->cfg.state_dir, sub, NULL);
        g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
        const char *key;
        while (d && (key = g_dir_read_name(d))) {
            g_autofree char *kd = g_build_filename(dir, key, NULL);
            g_autoptr(GPtrArray) uses = uses_in(kd);
            for (guint i = 0; i < uses->len; i++) {
                char *id = g_ptr_array_index(uses, i);
                if (!g_hash_table_contains(seen, id)) {
                    char *copy = g_strdup(id);
                    g_ptr_array_add(out, copy);
                    g_hash_table_add(seen, copy);
                }
            }
        }
    }
    return out;
}

/* The session a .target file of @dir describes, in @p (strings owned by @host, @iqn). */
static gboolean read_target(const char *dir, VnVolPath *p, char **host, char **iqn)
{
    g_autofree char *tf = g_build_filename(dir, ".target", NULL);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    char *colon;

    if (!g_file_get_contents(tf, &text, NULL, NULL))
        return FALSE;
    lines = g_strsplit(text, "\n", 3);
    if (g_strv_length(lines) < 2 || !(colon = strrchr(lines[0], ':')))
        return FALSE;
    *colon = '\0';
    *host = lines[0][0] == '[' ? g_strndup(lines[0] + 1, strlen(lines[0]) - 2) : g_strdup(lines[0]);
    *iqn = g_strdup(lines[1]);
    p->host = *host;
    p->port = atoi(colon + 1);
    p->iqn = *iqn;
    p->lun = -1;
    return TRUE;
}

/* TRUE when the use @path is stale for the sweep: its volume is not live and the use is
 * at least @min_age_s old. */
static gboolean use_stale(const char *path, const char *id, GHashTable *live, int min_age_s)
{
    GStatBuf st;

    if (g_hash_table_contains(live, id))
        return FALSE;
    if (min_age_s > 0 && g_stat(path, &st) == 0 &&
        st.st_mtime + min_age_s > g_get_real_time() / G_USEC_PER_SEC)
        return FALSE;
    return TRUE;
}

guint vn_volumes_sweep(VnVolumes *v, GHashTable *live, int min_age_s)
{
    guint removed = 0;
    g_autofree char *nfs = g_build_filename(v->cfg.state_dir, "nfs", NULL);
    g_autofree char *iscsi = g_build_filename(v->cfg.state_dir, "iscsi", NULL);
    g_autoptr(GDir) dn = NULL;
    g_autoptr(GDir) di = NULL;
    const char *key;

    g_mutex_lock(&v->lock);
    dn = g_dir_open(nfs, 0, NULL);
    while (dn && (key = g_dir_read_name(dn))) {
        g_autofree char *kd = g_build_filename(nfs, key, NULL);
        g_autofree char *mnt = g_build_filename(v->cfg.nfs_mount_point_base, key, NULL);
        g_autoptr(GPtrArray) uses = uses_in(kd);
        g_autoptr(GError) e = NULL;
        gboolean mounted = is_mounted(v, mnt);
        for (guint i = 0; i < uses->len; i++) {
            const char *id = g_ptr_array_index(uses, i);
            g_autofree char *u = g_build_filename(kd, id, NULL);
            if (use_stale(u, id, live, min_age_s)) {
                g_message("sweep: volume %s no longer uses %s", id, mnt);
                g_unlink(u);
            }
        }
        if (!nfs_release(v, kd, mnt, &e))
            g_warning("sweep: %s", e->message);
        else if (mounted && !is_mounted(v, mnt))
            removed++;
    }
    di = g_dir_open(iscsi, 0, NULL);
    while (di && (key = g_dir_read_name(di))) {
        g_autofree char *kd = g_build_filename(iscsi, key, NULL);
        g_autoptr(GPtrArray) uses = uses_in(kd);
        g_autofree char *host = NULL;
        g_autofree char *iqn = NULL;
        VnVolPath p;
        if (!read_target(kd, &p, &host, &iqn))
            continue;
        for (guint i = 0; i < uses->len; i++) {
            const char *id = g_ptr_array_index(uses, i);
            g_autofree char *u = g_build_filename(kd, id, NULL);
            if (!use_stale(u, id, live, min_age_s))
                continue;
            /* the stale volume's map and paths: its WWID names them */
            g_autofree char *text = read_trimmed(u);
            g_autoptr(GError) e = NULL;
            if (text && g_str_has_prefix(text, "wwid=")) {
                VnVolumeRequest r = { .volume_id = id, .iscsi = TRUE };
                r.paths = &p;
                r.n_paths = 1; /* the LUN is unknown here: devices go by their WWID below */
                if (!iscsi_remove_devices(v, &r, NULL, text + 5, &e)) {
                    g_warning("sweep: %s", e->message);
                    continue;
                }
                int sid = find_session(v, &p);
                if (sid) {
                    /* every path of this session whose WWID is the stale volume's */
                    g_autofree char *block = sys_path(v, "sys/block");
                    g_autoptr(GDir) bd = g_dir_open(block, 0, NULL);
                    const char *n;
                    while (bd && (n = g_dir_read_name(bd))) {
                        if (!g_str_has_prefix(n, "sd"))
                            continue;
                        g_autofree char *w = device_wwid(v, n);
                        if (w && strcmp(w, text + 5) == 0)
                            delete_device(v, n);
                    }
                }
            }
            g_message("sweep: volume %s no longer uses the session to %s on %s:%d", id, p.iqn,
                      p.host, p.port);
            g_unlink(u);
        }
        g_autoptr(GPtrArray) left = uses_in(kd);
        if (left->len == 0) {
            int before = find_session(v, &p);
            session_release(v, &p);
            if (before && !find_session(v, &p))
                removed++;
        }
    }
    g_mutex_unlock(&v->lock);
    return removed;
}
