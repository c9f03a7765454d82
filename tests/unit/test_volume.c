/* Unit tests of storage/volume.c's kernel connectors, driven through the runner seam and a
 * fake system tree (sysfs, /dev, /proc/self/mountinfo) that a fake "kernel" below keeps as
 * mount, iscsiadm, multipath and multipathd would.  The real tools run in tests/vm. */
#include "tests/unit/testutil.h"

#include <string.h>

#include <glib/gstdio.h>

#include "storage/stor_error.h"
#include "storage/volume.h"

#define IQN  "iqn.2026-11.org.virtnode.test:storage"
#define WWID "36001405deadbeef0000000000000001"

/* ------------------------------------------------------------------ the fake kernel */

typedef struct {
    char *root;          /* the fake system tree */
    GPtrArray *calls;    /* every argv, joined by spaces */
    GPtrArray *sessions; /* "portal iqn" of logged-in sessions; index + 1 = sid */
    GHashTable *dead;    /* portals whose login fails */
    gboolean map_busy;   /* multipath -f fails */
    int nfs_fail_above;  /* mount fails for NFS versions above this (x10): 42, 41, 30 */
    int next_dev;        /* sd<letter> */
    gboolean no_udev;    /* no link or /dev/mapper node is made for a new device */
} Fake;

static Fake fake;

static char *at(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static char *at(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *rel = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    return g_build_filename(fake.root, rel, NULL);
}

static void put(const char *path, const char *text)
{
    g_autofree char *dir = g_path_get_dirname(path);

    g_mkdir_with_parents(dir, 0755);
    assert_true(g_file_set_contents(path, text, -1, NULL));
}

static char *slurp(const char *path)
{
    char *t = NULL;

    return g_file_get_contents(path, &t, NULL, NULL) ? t : g_strdup("");
}

/* The LUN devices of session @sid, removed when someone wrote 1 to their delete file
 * (as the kernel does). */
static void apply_deletes(void)
{
    g_autofree char *block = at("sys/block");
    g_autoptr(GDir) d = g_dir_open(block, 0, NULL);
    const char *n;

    while (d && (n = g_dir_read_name(d))) {
        g_autofree char *del = at("sys/block/%s/device/delete", n);
        g_autofree char *text = slurp(del);
        if (strcmp(g_strstrip(text), "1") != 0)
            continue;
        g_autofree char *link = at("sys/block/%s/device/lunpath", n);
        g_autofree char *lunpath = slurp(link);
        vn_test_rmtree(lunpath);
        g_autofree char *bd = at("sys/block/%s", n);
        vn_test_rmtree(bd);
    }
}

/* A new SCSI disk for LUN @lun behind session @sid: the sysfs entries the connector reads. */
static void add_lun(int sid, int lun)
{
    char dev[8];
    g_autofree char *lunpath =
        at("sys/class/iscsi_session/session%d/device/target%d:0:0/%d:0:0:%d", sid, sid, sid, lun);
    g_autofree char *blk = NULL;

    g_snprintf(dev, sizeof(dev), "sd%c", 'a' + fake.next_dev++);
    blk = g_build_filename(lunpath, "block", dev, NULL);
    g_mkdir_with_parents(blk, 0755);
    g_autofree char *wwid = at("sys/block/%s/device/wwid", dev);
    g_autofree char *w = g_strdup_printf("naa.%d", lun);
    put(wwid, w);
    g_autofree char *del = at("sys/block/%s/device/delete", dev);
    put(del, "");
    g_autofree char *lp = at("sys/block/%s/device/lunpath", dev);
    put(lp, lunpath);
    g_autofree char *size = at("sys/block/%s/size", dev);
    put(size, "131072");
    g_autofree char *lunf = at("sys/block/%s/device/lun", dev);
    g_autofree char *l = g_strdup_printf("%d", lun);
    put(lunf, l);
    if (!fake.no_udev) {
        g_auto(GStrv) pi = g_strsplit(g_ptr_array_index(fake.sessions, sid - 1), " ", 2);
        g_autofree char *link = at("dev/disk/by-path/ip-%s-iscsi-%s-lun-%d", pi[0], pi[1], lun);
        put(link, "");
    }
}

static int session_of(const char *portal, const char *iqn)
{
    g_autofree char *key = g_strdup_printf("%s %s", portal, iqn);

    for (guint i = 0; i < fake.sessions->len; i++) {
        if (g_strcmp0(g_ptr_array_index(fake.sessions, i), key) == 0)
            return (int)i + 1;
    }
    return 0;
}

static const char *arg_after(const char *const *argv, const char *flag)
{
    for (int i = 0; argv[i]; i++) {
        if (strcmp(argv[i], flag) == 0)
            return argv[i + 1];
    }
    return NULL;
}

static gboolean fake_run_locked(const char *const *argv, int timeout_s, char **out, char **errout,
                                int *status, gpointer data, GError **error);

/* The connector logs in to every portal from a thread of its own: one command at a time
 * here, as the real tools serialise on iscsid and the kernel. */
static gboolean fake_run(const char *const *argv, int timeout_s, char **out, char **errout,
                         int *status, gpointer data, GError **error)
{
    static GMutex lock;
    gboolean ok;

    g_mutex_lock(&lock);
    ok = fake_run_locked(argv, timeout_s, out, errout, status, data, error);
    g_mutex_unlock(&lock);
    return ok;
}

static gboolean fake_run_locked(const char *const *argv, int timeout_s, char **out, char **errout,
                                int *status, gpointer data, GError **error)
{
    g_autofree char *line = g_strjoinv(" ", (char **)argv);
    GString *o = g_string_new(NULL);

    (void)timeout_s;
    (void)data;
    (void)error;
    (void)errout;
    apply_deletes();
    g_ptr_array_add(fake.calls, g_strdup(line));
    *status = 0;
    if (strcmp(argv[0], "mount") == 0) {
        const char *opts = arg_after(argv, "-o");
        int v = opts && strstr(opts, "vers=4.2") ? 42 : opts && strstr(opts, "vers=4.1") ? 41 : 30;
        if (v > fake.nfs_fail_above) {
            *status = 32;
        } else {
            g_autofree char *mi = at("proc/self/mountinfo");
            g_autofree char *text = slurp(mi);
            const char *mnt = argv[g_strv_length((char **)argv) - 1];
            g_autofree char *add = g_strdup_printf("%s36 25 0:45 / %s rw - nfs %s rw\n", text, mnt,
                                                   argv[g_strv_length((char **)argv) - 2]);
            put(mi, add);
        }
    } else if (strcmp(argv[0], "umount") == 0) {
        g_autofree char *mi = at("proc/self/mountinfo");
        g_autofree char *text = slurp(mi);
        g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
        GString *keep = g_string_new(NULL);
        for (char **l = lines; *l; l++) {
            g_autofree char *needle = g_strdup_printf(" %s ", argv[1]);
            if (**l && !strstr(*l, needle))
                g_string_append_printf(keep, "%s\n", *l);
        }
        put(mi, keep->str);
        g_string_free(keep, TRUE);
    } else if (strcmp(argv[0], "iscsiadm") == 0 && strcmp(argv[2], "session") == 0) {
        for (guint i = 0; i < fake.sessions->len; i++) {
            g_auto(GStrv) pi = g_strsplit(g_ptr_array_index(fake.sessions, i), " ", 2);
            if (*pi[0])
                g_string_append_printf(o, "tcp: [%u] %s,1 %s (non-flash)\n", i + 1, pi[0], pi[1]);
        }
        if (!o->len)
            *status = 21;
    } else if (strcmp(argv[0], "iscsiadm") == 0) {
        const char *iqn = arg_after(argv, "-T");
        const char *portal = arg_after(argv, "-p");
        int sid = session_of(portal, iqn);
        if (arg_after(argv, "--login") || g_strv_contains(argv, "--login")) {
            if (g_hash_table_contains(fake.dead, portal)) {
                *status = 8; /* ISCSI_ERR_TRANS_TIMEOUT */
            } else if (sid) {
                *status = 15;
            } else {
                g_ptr_array_add(fake.sessions, g_strdup_printf("%s %s", portal, iqn));
                sid = (int)fake.sessions->len;
                g_autofree char *t =
                    at("sys/class/iscsi_session/session%d/device/target%d:0:0", sid, sid);
                g_mkdir_with_parents(t, 0755);
                g_autofree char *scan = at("sys/class/scsi_host/host%d/scan", sid);
                put(scan, "");
            }
        } else if (g_strv_contains(argv, "--logout")) {
            if (!sid) {
                *status = 21;
            } else {
                g_free(g_ptr_array_index(fake.sessions, sid - 1));
                g_ptr_array_index(fake.sessions, sid - 1) = g_strdup(" ");
                g_autofree char *s = at("sys/class/iscsi_session/session%d", sid);
                vn_test_rmtree(s);
            }
        }
    } else if (strcmp(argv[0], "/lib/udev/scsi_id") == 0) {
        /* the LUN's identifier: the same on every path */
        const char *dev = strrchr(argv[4], '/') + 1;
        g_autofree char *lf = at("sys/block/%s/device/lun", dev);
        g_autofree char *lun = slurp(lf);
        g_string_append_printf(o, "3600140%s\n", lun);
    } else if (strcmp(argv[0], "multipathd") == 0 && strcmp(argv[1], "add") == 0) {
        /* the map appears once a path of its WWID is added */
        const char *dev = strrchr(argv[3], '/') + 1;
        g_autofree char *lf = at("sys/block/%s/device/lun", dev);
        g_autofree char *lun = slurp(lf);
        g_autofree char *uuid = at("sys/block/dm-%s/dm/uuid", lun);
        g_autofree char *u = g_strdup_printf("mpath-3600140%s", lun);
        put(uuid, u);
        g_autofree char *name = at("sys/block/dm-%s/dm/name", lun);
        g_autofree char *nm = g_strdup_printf("mpath%c", 'a' + atoi(lun));
        put(name, nm);
        g_autofree char *slave = at("sys/block/dm-%s/slaves/%s", lun, dev);
        put(slave, "");
        if (!fake.no_udev) {
            g_autofree char *link = at("dev/disk/by-id/dm-uuid-%s", u);
            put(link, "");
            g_autofree char *node = at("dev/mapper/%s", nm);
            put(node, "");
        }
    } else if (strcmp(argv[0], "multipath") == 0 && strcmp(argv[1], "-f") == 0) {
        if (fake.map_busy) {
            *status = 1;
        } else {
            g_autofree char *block = at("sys/block");
            g_autoptr(GDir) d = g_dir_open(block, 0, NULL);
            const char *n;
            while (d && (n = g_dir_read_name(d))) {
                g_autofree char *nf = at("sys/block/%s/dm/name", n);
                g_autofree char *name = slurp(nf);
                if (strcmp(name, argv[2]) == 0) {
                    g_autofree char *uf = at("sys/block/%s/dm/uuid", n);
                    g_autofree char *uuid = slurp(uf);
                    g_autofree char *link = at("dev/disk/by-id/dm-uuid-%s", uuid);
                    g_autofree char *node = at("dev/mapper/%s", name);
                    g_unlink(link);
                    g_unlink(node);
                    g_autofree char *dm = at("sys/block/%s", n);
                    vn_test_rmtree(dm);
                    break;
                }
            }
        }
    }
    if (out)
        *out = g_string_free(o, FALSE);
    else
        g_string_free(o, TRUE);
    return TRUE;
}

/* After the login of a session, its LUNs appear at the targeted scan: the fake adds every
 * LUN a volume of the test asks for right away. */
static void luns_on_all_sessions(int lun)
{
    for (guint i = 0; i < fake.sessions->len; i++) {
        if (strcmp(g_ptr_array_index(fake.sessions, i), " ") != 0)
            add_lun((int)i + 1, lun);
    }
}

static int setup(void **state)
{
    vn_test_dir_setup(state);
    fake.root = g_build_filename(vn_test_dir(), "sys", NULL);
    g_mkdir_with_parents(fake.root, 0755);
    g_autofree char *mi = at("proc/self/mountinfo");
    put(mi, "");
    fake.calls = g_ptr_array_new_with_free_func(g_free);
    fake.sessions = g_ptr_array_new_with_free_func(g_free);
    fake.dead = g_hash_table_new(g_str_hash, g_str_equal);
    fake.map_busy = FALSE;
    fake.nfs_fail_above = 42;
    fake.next_dev = 0;
    fake.no_udev = FALSE;
    return 0;
}

static int teardown(void **state)
{
    g_free(fake.root);
    g_ptr_array_unref(fake.calls);
    g_ptr_array_unref(fake.sessions);
    g_hash_table_unref(fake.dead);
    return vn_test_dir_teardown(state);
}

static VnVolumes *volumes(gboolean multipath)
{
    g_autofree char *state = g_build_filename(vn_test_dir(), "state", NULL);
    g_autofree char *mnt = g_build_filename(vn_test_dir(), "mnt", NULL);
    VnVolumesConfig c = { .state_dir = state,
                          .nfs_mount_point_base = mnt,
                          .nfs_driver = VN_VOL_DRIVER_KERNEL,
                          .iscsi_driver = VN_VOL_DRIVER_KERNEL,
                          .use_multipath = multipath,
                          .initiator_name = "iqn.2010-10.org.virtnode:test",
                          .sys_root = fake.root,
                          .command_timeout = 5,
                          .attach_timeout = 1,
                          .attempts = 2,
                          .run = fake_run };
    g_autoptr(GError) err = NULL;
    VnVolumes *v = vn_volumes_new(&c, &err);

    assert_non_null(v);
    return v;
}

static guint count_calls(const char *prefix)
{
    guint n = 0;

    for (guint i = 0; i < fake.calls->len; i++)
        n += g_str_has_prefix(g_ptr_array_index(fake.calls, i), prefix);
    return n;
}

static gboolean mounted(const char *mnt)
{
    g_autofree char *mi = at("proc/self/mountinfo");
    g_autofree char *text = slurp(mi);
    g_autofree char *needle = g_strdup_printf(" %s ", mnt);

    return strstr(text, needle) != NULL;
}

/* ------------------------------------------------------------------ NFS */

static VnVolumeRequest nfs_req(const char *id, const char *options)
{
    VnVolumeRequest r = { .volume_id = id,
                          .export = "nas.example:/exports/cinder",
                          .server = "nas.example",
                          .path = "/exports/cinder",
                          .name = id,
                          .options = options,
                          .format = "raw" };
    return r;
}

static void test_nfs_version_fallback(void **state)
{
    g_autoptr(VnVolumes) v = volumes(FALSE);
    VnVolumeRequest r = nfs_req("volume-1", NULL);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, r.export);

    (void)state;
    fake.nfs_fail_above = 30; /* an NFSv3-only server */
    assert_true(vn_volumes_connect(v, &r, &d, &err));
    assert_int_equal(count_calls("mount -t nfs -o vers=4.2 nas.example:/exports/cinder"), 1);
    assert_int_equal(count_calls("mount -t nfs -o vers=4.1 "), 1);
    assert_int_equal(count_calls("mount -t nfs -o vers=3 "), 1);
    assert_true(mounted(mnt));
    assert_int_equal(d.kind, VN_VOL_DISK_FILE);
    g_autofree char *want = g_build_filename(mnt, "volume-1", NULL);
    assert_string_equal(d.path, want);
    assert_string_equal(d.health_key, "nfs:nas.example:/exports/cinder");
    vn_volume_disk_clear(&d);
    /* the mount point is <base>/<hash of the export> */
    g_autofree char *base = g_path_get_dirname(mnt);
    g_autofree char *expected_base = g_build_filename(vn_test_dir(), "mnt", NULL);
    assert_string_equal(base, expected_base);
}

static void test_nfs_pinned_version_and_options(void **state)
{
    g_autoptr(VnVolumes) v = volumes(FALSE);
    VnVolumeRequest r = nfs_req("volume-1", "nfsvers=4.1,timeo=600");
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;

    (void)state;
    fake.nfs_fail_above = 41;
    assert_true(vn_volumes_connect(v, &r, &d, &err));
    assert_int_equal(fake.calls->len, 1);
    assert_true(g_str_has_prefix(g_ptr_array_index(fake.calls, 0),
                                 "mount -t nfs -o nfsvers=4.1,timeo=600 nas.example:"));
    vn_volume_disk_clear(&d);
}

static void test_nfs_mount_shared_and_counted_across_restarts(void **state)
{
    g_autoptr(VnVolumes) v = volumes(FALSE);
    VnVolumeRequest a = nfs_req("volume-a", NULL), b = nfs_req("volume-b", NULL);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, a.export);

    (void)state;
    assert_true(vn_volumes_connect(v, &a, &d, &err));
    vn_volume_disk_clear(&d);
    assert_true(vn_volumes_connect(v, &b, &d, &err));
    vn_volume_disk_clear(&d);
    assert_int_equal(count_calls("mount "), 1); /* one mount for the export */
    /* the agent restarts: the uses were recorded on disk */
    vn_volumes_free(g_steal_pointer(&v));
    v = volumes(FALSE);
    g_autoptr(GPtrArray) rec = vn_volumes_recorded(v);
    assert_int_equal(rec->len, 2);
    assert_true(vn_volumes_disconnect(v, &a, &err));
    assert_int_equal(count_calls("umount"), 0);
    assert_true(mounted(mnt));
    assert_true(vn_volumes_disconnect(v, &b, &err));
    assert_int_equal(count_calls("umount"), 1);
    assert_false(mounted(mnt));
    assert_false(g_file_test(mnt, G_FILE_TEST_EXISTS));
    /* a disconnect of what is not connected is no error and runs nothing */
    guint before = fake.calls->len;
    assert_true(vn_volumes_disconnect(v, &b, &err));
    assert_int_equal(fake.calls->len, before);
}

static void test_nfs_mount_failure_leaves_nothing(void **state)
{
    g_autoptr(VnVolumes) v = volumes(FALSE);
    VnVolumeRequest r = nfs_req("volume-1", NULL);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, r.export);

    (void)state;
    fake.nfs_fail_above = 0; /* no version works */
    assert_false(vn_volumes_connect(v, &r, &d, &err));
    assert_non_null(strstr(err->message, "4.2, 4.1 and 3"));
    assert_int_equal(count_calls("mount "), 6); /* 3 versions x 2 attempts */
    g_autoptr(GPtrArray) rec = vn_volumes_recorded(v);
    assert_int_equal(rec->len, 0);
    assert_false(g_file_test(mnt, G_FILE_TEST_EXISTS));
}

static void test_nfs_sweep_unmounts_what_no_volume_uses(void **state)
{
    g_autoptr(VnVolumes) v = volumes(FALSE);
    VnVolumeRequest a = nfs_req("volume-a", NULL);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;
    g_autoptr(GHashTable) live = g_hash_table_new(g_str_hash, g_str_equal);
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, a.export);

    (void)state;
    assert_true(vn_volumes_connect(v, &a, &d, &err));
    vn_volume_disk_clear(&d);
    /* a live volume keeps it; a young use keeps it from the periodic sweep */
    g_hash_table_add(live, (gpointer) "volume-a");
    assert_int_equal(vn_volumes_sweep(v, live, 0), 0);
    g_hash_table_remove_all(live);
    assert_int_equal(vn_volumes_sweep(v, live, 600), 0);
    assert_true(mounted(mnt));
    /* the crash case: a use nobody owns */
    assert_int_equal(vn_volumes_sweep(v, live, 0), 1);
    assert_false(mounted(mnt));
}

/* ------------------------------------------------------------------ iSCSI */

static const VnVolPath two_paths_lun1[] = { { "192.0.2.10", 3260, IQN, 1 },
                                            { "198.51.100.10", 3260, IQN, 1 } };
static const VnVolPath two_paths_lun2[] = { { "192.0.2.10", 3260, IQN, 2 },
                                            { "198.51.100.10", 3260, IQN, 2 } };

static VnVolumeRequest iscsi_req(const char *id, const VnVolPath *paths, guint n)
{
    VnVolumeRequest r = { .volume_id = id,
                          .iscsi = TRUE,
                          .paths = paths,
                          .n_paths = n,
                          .chap_username = "vnchap",
                          .chap_password = "s3cr3t-chap" };
    return r;
}

/* Connects with the fake's LUNs appearing as the logins complete. */
static gboolean connect_lun(VnVolumes *v, VnVolumeRequest *r, int lun, VnVolumeDisk *d,
                            GError **error)
{
    /* logins first (so sessions exist), then the LUN devices for the scan to find: the
     * connector's wait loop sees them appear */
    for (guint i = 0; i < r->n_paths; i++) {
        g_autofree char *portal = g_strdup_printf("%s:%d", r->paths[i].host, r->paths[i].port);
        if (!session_of(portal, r->paths[i].iqn) && !g_hash_table_contains(fake.dead, portal)) {
            g_ptr_array_add(fake.sessions, g_strdup_printf("%s %s", portal, r->paths[i].iqn));
            int sid = (int)fake.sessions->len;
            g_autofree char *t =
                at("sys/class/iscsi_session/session%d/device/target%d:0:0", sid, sid);
            g_mkdir_with_parents(t, 0755);
            g_autofree char *scan = at("sys/class/scsi_host/host%d/scan", sid);
            put(scan, "");
        }
    }
    luns_on_all_sessions(lun);
    return vn_volumes_connect(v, r, d, error);
}

static void test_iscsi_multipath_connect_and_disconnect(void **state)
{
    g_autoptr(VnVolumes) v = volumes(TRUE);
    VnVolumeRequest r1 = iscsi_req("volume-1", two_paths_lun1, 2);
    VnVolumeRequest r2 = iscsi_req("volume-2", two_paths_lun2, 2);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;

    (void)state;
    assert_true(connect_lun(v, &r1, 1, &d, &err));
    assert_int_equal(d.kind, VN_VOL_DISK_BLOCK);
    assert_string_equal(d.path, "/dev/disk/by-id/dm-uuid-mpath-36001401");
    assert_string_equal(d.health_key, "iscsi:36001401");
    vn_volume_disk_clear(&d);
    /* both portals: node, CHAP, login; the WWID added to multipath, both paths to the map */
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN " -p 192.0.2.10:3260 --login"), 1);
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN " -p 198.51.100.10:3260 --login"), 1);
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN
                                 " -p 192.0.2.10:3260 --op update -n node.session.auth.authmethod "
                                 "-v CHAP"),
                     1);
    assert_int_equal(count_calls("multipath -a 36001401"), 1);
    assert_int_equal(count_calls("multipathd add path "), 2);
    /* the targeted scan: channel, target and the LUN, never a wildcard */
    g_autofree char *scan = at("sys/class/scsi_host/host1/scan");
    g_autofree char *scanned = slurp(scan);
    assert_string_equal(scanned, "0 0 1");

    /* a second volume on the same target shares the sessions */
    assert_true(connect_lun(v, &r2, 2, &d, &err));
    assert_string_equal(d.path, "/dev/disk/by-id/dm-uuid-mpath-36001402");
    vn_volume_disk_clear(&d);
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN " -p 192.0.2.10:3260 --login"), 2);

    /* the first leaves: its map flushed (queueing off first), its paths deleted, the
     * sessions kept for the second */
    assert_true(vn_volumes_disconnect(v, &r1, &err));
    assert_int_equal(count_calls("multipathd disablequeueing map mpathb"), 1);
    assert_int_equal(count_calls("multipath -f mpathb"), 1);
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN " -p 192.0.2.10:3260 --logout"), 0);
    g_autofree char *dm1 = at("sys/block/dm-1");
    assert_false(g_file_test(dm1, G_FILE_TEST_EXISTS));
    apply_deletes();
    g_autofree char *sda = at("sys/block/sda");
    assert_false(g_file_test(sda, G_FILE_TEST_EXISTS));
    g_autofree char *dm2 = at("sys/block/dm-2");
    assert_true(g_file_test(dm2, G_FILE_TEST_EXISTS));

    /* the last leaves: map, paths, then both sessions logged out */
    assert_true(vn_volumes_disconnect(v, &r2, &err));
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN " -p 192.0.2.10:3260 --logout"), 1);
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN " -p 198.51.100.10:3260 --logout"), 1);
    assert_int_equal(session_of("192.0.2.10:3260", IQN), 0);
    g_autoptr(GPtrArray) rec = vn_volumes_recorded(v);
    assert_int_equal(rec->len, 0);
    /* the password went to iscsiadm's node record only: never into an error or a file */
    g_autofree char *state_dir = g_build_filename(vn_test_dir(), "state", NULL);
    g_autofree char *grep = g_strdup_printf("sh -c '! grep -rq s3cr3t-chap %s'", state_dir);
    assert_true(vn_test_run(grep));
}

static void test_iscsi_one_dead_portal(void **state)
{
    g_autoptr(VnVolumes) v = volumes(TRUE);
    VnVolumeRequest r = iscsi_req("volume-1", two_paths_lun1, 2);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;

    (void)state;
    g_hash_table_add(fake.dead, (gpointer) "198.51.100.10:3260");
    assert_true(connect_lun(v, &r, 1, &d, &err));
    assert_int_equal(count_calls("multipathd add path "), 1);
    vn_volume_disk_clear(&d);
    assert_true(vn_volumes_disconnect(v, &r, &err));
    assert_int_equal(session_of("192.0.2.10:3260", IQN), 0);
}

static void test_iscsi_all_portals_dead_leaves_nothing(void **state)
{
    g_autoptr(VnVolumes) v = volumes(TRUE);
    VnVolumeRequest r = iscsi_req("volume-1", two_paths_lun1, 2);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;

    (void)state;
    g_hash_table_add(fake.dead, (gpointer) "192.0.2.10:3260");
    g_hash_table_add(fake.dead, (gpointer) "198.51.100.10:3260");
    assert_false(connect_lun(v, &r, 1, &d, &err));
    assert_non_null(strstr(err->message, "no path came up"));
    assert_null(strstr(err->message, "s3cr3t"));
    g_autoptr(GPtrArray) rec = vn_volumes_recorded(v);
    assert_int_equal(rec->len, 0);
    g_autofree char *dir = g_build_filename(vn_test_dir(), "state", "iscsi", NULL);
    g_autoptr(GDir) d2 = g_dir_open(dir, 0, NULL);
    assert_null(g_dir_read_name(d2));
}

static void test_iscsi_busy_map_keeps_everything(void **state)
{
    g_autoptr(VnVolumes) v = volumes(TRUE);
    VnVolumeRequest r = iscsi_req("volume-1", two_paths_lun1, 2);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;

    (void)state;
    assert_true(connect_lun(v, &r, 1, &d, &err));
    vn_volume_disk_clear(&d);
    fake.map_busy = TRUE;
    assert_false(vn_volumes_disconnect(v, &r, &err));
    assert_non_null(strstr(err->message, "cannot be flushed"));
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN " -p 192.0.2.10:3260 --logout"), 0);
    g_autoptr(GPtrArray) rec = vn_volumes_recorded(v);
    assert_int_equal(rec->len, 1);
    /* once the holder lets go, the sweep finishes the job */
    fake.map_busy = FALSE;
    g_autoptr(GHashTable) live = g_hash_table_new(g_str_hash, g_str_equal);
    assert_int_equal(vn_volumes_sweep(v, live, 0), 2);
    assert_int_equal(session_of("192.0.2.10:3260", IQN), 0);
    assert_int_equal(session_of("198.51.100.10:3260", IQN), 0);
}

static void test_iscsi_sweep_after_crash_mid_attach(void **state)
{
    g_autoptr(VnVolumes) v = volumes(TRUE);
    VnVolumeRequest r = iscsi_req("volume-1", two_paths_lun1, 2);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;
    g_autoptr(GHashTable) live = g_hash_table_new(g_str_hash, g_str_equal);

    (void)state;
    assert_true(connect_lun(v, &r, 1, &d, &err));
    vn_volume_disk_clear(&d);
    /* kill -9 before the record: a new agent finds the uses but no instance owns them */
    vn_volumes_free(g_steal_pointer(&v));
    v = volumes(TRUE);
    assert_int_equal(vn_volumes_sweep(v, live, 0), 2);
    assert_int_equal(count_calls("multipath -f mpathb"), 1);
    assert_int_equal(session_of("192.0.2.10:3260", IQN), 0);
    g_autoptr(GPtrArray) rec = vn_volumes_recorded(v);
    assert_int_equal(rec->len, 0);
}

static void test_iscsi_single_path_without_multipath(void **state)
{
    g_autoptr(VnVolumes) v = volumes(FALSE);
    VnVolumeRequest r = iscsi_req("volume-1", two_paths_lun1, 2);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;

    (void)state;
    g_hash_table_add(fake.dead, (gpointer) "198.51.100.10:3260"); /* never asked for */
    assert_true(connect_lun(v, &r, 1, &d, &err));
    /* only the target portal is logged in to; the guest gets its device */
    assert_int_equal(count_calls("iscsiadm -m node -T " IQN " -p 198.51.100.10:3260 --login"), 0);
    assert_int_equal(count_calls("multipath"), 0);
    assert_string_equal(d.path, "/dev/disk/by-path/ip-192.0.2.10:3260-iscsi-" IQN "-lun-1");
    vn_volume_disk_clear(&d);
    guint64 size = 0;
    assert_true(vn_volumes_extend(v, &r, &size, &err));
    assert_int_equal(size, 131072ull * 512);
    assert_true(vn_volumes_disconnect(v, &r, &err));
    assert_int_equal(session_of("192.0.2.10:3260", IQN), 0);
}

/* udev makes a new map's link a moment after the map: the connect waits for it rather
 * than give the guest a node that is not there yet. */
static gpointer udev_later(gpointer unused)
{
    g_usleep(G_USEC_PER_SEC / 4);
    g_autofree char *link = at("dev/disk/by-id/dm-uuid-mpath-36001401");
    put(link, "");
    (void)unused;
    return NULL;
}

static void test_iscsi_waits_for_the_udev_link(void **state)
{
    g_autoptr(VnVolumes) v = volumes(TRUE);
    VnVolumeRequest r = iscsi_req("volume-1", two_paths_lun1, 2);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;

    (void)state;
    fake.no_udev = TRUE;
    GThread *t = g_thread_new("udev", udev_later, NULL);
    assert_true(connect_lun(v, &r, 1, &d, &err));
    g_thread_join(t);
    assert_string_equal(d.path, "/dev/disk/by-id/dm-uuid-mpath-36001401");
    vn_volume_disk_clear(&d);
    assert_true(vn_volumes_disconnect(v, &r, &err));
}

/* Without udev, after its wait: the kernel's own node, never a name nobody made. */
static void test_iscsi_without_udev_gives_the_kernel_node(void **state)
{
    g_autoptr(VnVolumes) mp = volumes(TRUE);
    g_autoptr(VnVolumes) single = volumes(FALSE);
    VnVolumeRequest r1 = iscsi_req("volume-1", two_paths_lun1, 2);
    VnVolumeRequest r2 = iscsi_req("volume-2", two_paths_lun2, 2);
    VnVolumeDisk d = { 0 };
    g_autoptr(GError) err = NULL;

    (void)state;
    fake.no_udev = TRUE;
    assert_true(connect_lun(mp, &r1, 1, &d, &err));
    assert_string_equal(d.path, "/dev/dm-1");
    vn_volume_disk_clear(&d);
    assert_true(connect_lun(single, &r2, 2, &d, &err));
    g_assert_true(g_str_has_prefix(d.path, "/dev/sd"));
    vn_volume_disk_clear(&d);
    assert_true(vn_volumes_disconnect(single, &r2, &err));
    assert_true(vn_volumes_disconnect(mp, &r1, &err));
}

static void test_qemu_drivers_describe_network_disks(void **state)
{
    g_autofree char *st = g_build_filename(vn_test_dir(), "state", NULL);
    VnVolumesConfig c = { .state_dir = st,
                          .nfs_mount_point_base = "/nonexistent",
                          .nfs_driver = VN_VOL_DRIVER_QEMU,
                          .iscsi_driver = VN_VOL_DRIVER_QEMU,
                          .initiator_name = "iqn.2010-10.org.virtnode:test",
                          .run = fake_run };
    g_autoptr(GError) err = NULL;
    g_autoptr(VnVolumes) v = vn_volumes_new(&c, &err);
    VnVolumeRequest n = nfs_req("volume-1", NULL);
    VnVolumeRequest i = iscsi_req("volume-2", two_paths_lun2, 2);
    VnVolumeDisk d = { 0 };

    (void)state;
    assert_true(vn_volumes_connect(v, &n, &d, &err));
    assert_int_equal(d.kind, VN_VOL_DISK_NETWORK);
    assert_string_equal(d.protocol, "nfs");
    assert_string_equal(d.name, "/exports/cinder/volume-1");
    assert_string_equal(d.host, "nas.example");
    vn_volume_disk_clear(&d);
    assert_true(vn_volumes_connect(v, &i, &d, &err));
    assert_string_equal(d.protocol, "iscsi");
    assert_string_equal(d.name, IQN "/2");
    assert_string_equal(d.host, "192.0.2.10");
    assert_int_equal(d.port, 3260);
    assert_string_equal(d.initiator, "iqn.2010-10.org.virtnode:test");
    assert_string_equal(d.auth_username, "vnchap");
    vn_volume_disk_clear(&d);
    assert_int_equal(fake.calls->len, 0); /* nothing ran on the host */
    assert_true(vn_volumes_disconnect(v, &i, &err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nfs_version_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nfs_pinned_version_and_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nfs_mount_shared_and_counted_across_restarts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_nfs_mount_failure_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nfs_sweep_unmounts_what_no_volume_uses, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_iscsi_multipath_connect_and_disconnect, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_iscsi_one_dead_portal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iscsi_all_portals_dead_leaves_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_iscsi_busy_map_keeps_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iscsi_sweep_after_crash_mid_attach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iscsi_single_path_without_multipath, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iscsi_waits_for_the_udev_link, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iscsi_without_udev_gives_the_kernel_node, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_qemu_drivers_describe_network_disks, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
