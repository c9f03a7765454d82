/* tests/vm/vmtest.c - the agent's own kernel-facing code (storage/'s kernel connectors,
 * network/'s VLAN uplinks), run for real inside a TCG test VM whose kernel has what the
 * test machine's lacks: open-iscsi's initiator, dm-multipath, the NFS client and 802.1Q.
 *
 *   vn-vmtest iscsi P1 P2 IQN USER PASSWORD   two LUNs on one target, two portals each
 *   vn-vmtest nfs EXPORT                      a kernel NFS mount, version fallback
 *   vn-vmtest vlan IFACE VID ADDRESS          a VLAN network's bridge on IFACE
 *
 * Every check prints "VMTEST <what> ok|FAIL ..."; the last line is "VMTEST <mode> PASS" or
 * "VMTEST <mode> FAIL".  tests/integration/test_13_vm_kernel.py reads them. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "network/bridge.h"
#include "storage/volume.h"

static int failures;

static void check(gboolean ok, const char *what, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void check(gboolean ok, const char *what, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *detail = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    printf("VMTEST %s %s %s\n", what, ok ? "ok" : "FAIL", detail);
    fflush(stdout);
    if (!ok)
        failures++;
}

static int sh(const char *cmd)
{
    int rc = system(cmd);

    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static char *sh_out(const char *cmd)
{
    g_autofree char *out = NULL;

    g_spawn_command_line_sync(cmd, &out, NULL, NULL, NULL);
    return out ? g_strstrip(g_steal_pointer(&out)) : g_strdup("");
}

/* Writes @marker at the start of @dev (O_DIRECT, synchronous) or reads it back into @buf. */
static gboolean direct_io(const char *dev, gboolean write_it, char *marker, gsize len)
{
    void *buf = NULL;
    int fd = open(dev, (write_it ? O_WRONLY : O_RDONLY) | O_DIRECT | O_CLOEXEC);
    gboolean ok;

    if (fd < 0 || posix_memalign(&buf, 4096, 4096) != 0) {
        if (fd >= 0)
            close(fd);
        return FALSE;
    }
    memset(buf, 0, 4096);
    if (write_it) {
        memcpy(buf, marker, MIN(len, 4095));
        ok = pwrite(fd, buf, 4096, 0) == 4096 && fdatasync(fd) == 0;
    } else {
        ok = pread(fd, buf, 4096, 0) == 4096;
        if (ok)
            g_strlcpy(marker, buf, len);
    }
    free(buf);
    close(fd);
    return ok;
}

/* The dm device of the multipath map on @path ("/dev/mapper/x" or a by-id link). */
static char *dm_of(const char *path)
{
    g_autofree char *real = realpath(path, NULL);

    return real && g_str_has_prefix(real, "/dev/dm-") ? g_strdup(real + 5) : NULL;
}

static guint count_entries(const char *dir, const char *prefix)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *n;
    guint c = 0;

    while (d && (n = g_dir_read_name(d)))
        c += g_str_has_prefix(n, prefix);
    return c;
}

static guint sessions(void)
{
    return count_entries("/sys/class/iscsi_session", "session");
}

static gboolean sessions_logged_in(void)
{
    g_autoptr(GDir) d = g_dir_open("/sys/class/iscsi_session", 0, NULL);
    const char *n;

    while (d && (n = g_dir_read_name(d))) {
        g_autofree char *p = g_strdup_printf("/sys/class/iscsi_session/%s/state", n);
        g_autofree char *s = NULL;
        if (!g_file_get_contents(p, &s, NULL, NULL) || !g_str_has_prefix(s, "LOGGED_IN"))
            return FALSE;
    }
    return TRUE;
}

static VnVolumes *kernel_volumes(void)
{
    VnVolumesConfig c = { .state_dir = "/tmp/vnstate",
                          .nfs_mount_point_base = "/tmp/vnmnt",
                          .nfs_mount_options = "nolock",
                          .nfs_driver = VN_VOL_DRIVER_KERNEL,
                          .iscsi_driver = VN_VOL_DRIVER_KERNEL,
                          .use_multipath = TRUE,
                          .initiator_name = NULL,
                          .sys_root = "/",
                          .command_timeout = 60,
                          .attach_timeout = 60,
                          .attempts = 3 };
    g_autoptr(GError) err = NULL;
    VnVolumes *v = vn_volumes_new(&c, &err);

    if (!v)
        printf("VMTEST setup FAIL %s\n", err->message);
    return v;
}

static int run_iscsi(char **argv)
{
    const char *p1 = argv[0], *p2 = argv[1], *iqn = argv[2];
    VnVolPath lun1[] = { { p1, 3260, iqn, 1 }, { p2, 3260, iqn, 1 } };
    VnVolPath lun2[] = { { p1, 3260, iqn, 2 }, { p2, 3260, iqn, 2 } };
    VnVolumeRequest a = { .volume_id = "vol-a",
                          .iscsi = TRUE,
                          .paths = lun1,
                          .n_paths = 2,
                          .chap_username = argv[3],
                          .chap_password = argv[4] };
    VnVolumeRequest b = a;
    VnVolumeDisk da = { 0 }, db = { 0 };
    g_autoptr(VnVolumes) v = kernel_volumes();
    g_autoptr(GError) err = NULL;
    char marker[64] = "VNVM-MARKER-A", back[64] = "";
    gint64 t0;

    b.volume_id = "vol-b";
    b.paths = lun2;
    if (!v)
        return 1;
    t0 = g_get_monotonic_time();
    gboolean ok = vn_volumes_connect(v, &a, &da, &err);
    check(ok, "iscsi-connect-a", "%s in %.1f s", err ? err->message : da.path,
          (g_get_monotonic_time() - t0) / 1e6);
    if (err)
        return 1;
    check(sessions() == 2, "iscsi-sessions", "%u sessions (one per portal)", sessions());
    g_autofree char *dm = dm_of(da.path);
    g_autofree char *slaves = dm ? g_strdup_printf("/sys/block/%s/slaves", dm) : NULL;
    guint paths = slaves ? count_entries(slaves, "sd") : 0;
    check(dm != NULL && paths == 2, "iscsi-map", "%s is %s with %u paths", da.path,
          dm ? dm : "no map", paths);
    check(direct_io(da.path, TRUE, marker, sizeof(marker)), "iscsi-write", "marker written");
    check(direct_io(da.path, FALSE, back, sizeof(back)) && strcmp(back, marker) == 0, "iscsi-read",
          "read back '%s'", back);
    t0 = g_get_monotonic_time();
    ok = vn_volumes_connect(v, &b, &db, &err);
    check(ok, "iscsi-connect-b", "%s in %.1f s", err ? err->message : db.path,
          (g_get_monotonic_time() - t0) / 1e6);
    if (err)
        return 1;
    check(sessions() == 2, "iscsi-sessions-shared", "%u sessions for two volumes", sessions());

    /* one portal goes away: I/O goes on over the other path */
    sh("ip link set eth0 down");
    memset(back, 0, sizeof(back));
    t0 = g_get_monotonic_time();
    gboolean read_ok = direct_io(da.path, FALSE, back, sizeof(back));
    check(read_ok && strcmp(back, marker) == 0, "iscsi-path-loss",
          "read '%s' with portal %s unreachable after %.1f s", back, p1,
          (g_get_monotonic_time() - t0) / 1e6);
    g_autofree char *mp = sh_out("multipathd show paths format \"%d %t %T\"");
    printf("VMTEST paths after loss:\n%s\n", mp);
    sh("ip link set eth0 up");
    for (int i = 0; i < 60 && !sessions_logged_in(); i++)
        g_usleep(G_USEC_PER_SEC);
    check(sessions_logged_in(), "iscsi-path-back", "both sessions logged in again");

    /* the first volume leaves: its map and paths go, the sessions stay for the second */
    g_autofree char *dma = dm_of(da.path);
    ok = vn_volumes_disconnect(v, &a, &err);
    check(ok, "iscsi-disconnect-a", "%s", err ? err->message : "done");
    g_autofree char *dma_path = dma ? g_strdup_printf("/sys/block/%s", dma) : NULL;
    check(dma_path && !g_file_test(dma_path, G_FILE_TEST_EXISTS), "iscsi-map-a-gone", "%s",
          dma ? dma : "?");
    check(sessions() == 2, "iscsi-sessions-kept", "%u sessions kept for vol-b", sessions());
    check(direct_io(db.path, TRUE, marker, sizeof(marker)), "iscsi-b-still-works",
          "vol-b written after vol-a left");
    /* the last leaves: nothing stays */
    ok = vn_volumes_disconnect(v, &b, &err);
    check(ok, "iscsi-disconnect-b", "%s", err ? err->message : "done");
    g_usleep(G_USEC_PER_SEC);
    guint sd = count_entries("/sys/block", "sd"), dms = count_entries("/sys/block", "dm-");
    check(sessions() == 0 && sd == 0 && dms == 0, "iscsi-nothing-left",
          "%u sessions, %u sd paths, %u maps", sessions(), sd, dms);
    g_autofree char *maps = sh_out("multipath -ll");
    check(*maps == '\0', "iscsi-no-maps", "multipath -ll: '%s'", maps);
    vn_volume_disk_clear(&da);
    vn_volume_disk_clear(&db);
    return failures ? 1 : 0;
}

static int run_nfs(char **argv)
{
    g_autoptr(VnVolumes) v = kernel_volumes();
    g_autoptr(GError) err = NULL;
    g_auto(GStrv) parts = g_strsplit(argv[0], ":", 2);
    VnVolumeRequest a = { .volume_id = "nfs-a",
                          .export = argv[0],
                          .server = parts[0],
                          .path = parts[1],
                          .name = "volume-nfs-a",
                          .format = "raw" };
    VnVolumeRequest b = a;
    VnVolumeDisk da = { 0 }, db = { 0 };

    b.volume_id = "nfs-b";
    b.name = "volume-nfs-b";
    if (!v)
        return 1;
    gboolean ok = vn_volumes_connect(v, &a, &da, &err);
    check(ok, "nfs-connect-a", "%s", err ? err->message : da.path);
    if (err)
        return 1;
    g_autofree char *mnt = vn_volumes_nfs_mount_point(v, a.export);
    g_autofree char *grep = g_strdup_printf("grep ' %s ' /proc/mounts", mnt);
    g_autofree char *line = sh_out(grep);
    check(strstr(line, " nfs") != NULL, "nfs-mounted", "%s", line);
    ok = vn_volumes_connect(v, &b, &db, &err);
    check(ok, "nfs-connect-b", "%s", err ? err->message : db.path);
    g_autofree char *count = g_strdup_printf("grep -c ' %s ' /proc/mounts", mnt);
    g_autofree char *n = sh_out(count);
    check(strcmp(n, "1") == 0, "nfs-one-mount", "%s mount(s) for two volumes", n);
    g_autofree char *data = g_strdup("VNVM-NFS-MARKER");
    check(g_file_set_contents(da.path, data, -1, NULL), "nfs-write", "%s", da.path);
    ok = vn_volumes_disconnect(v, &a, &err);
    check(ok, "nfs-disconnect-a", "%s", err ? err->message : "done");
    g_autofree char *n2 = sh_out(count);
    check(strcmp(n2, "1") == 0, "nfs-kept-for-b", "%s mount(s) while nfs-b uses it", n2);
    ok = vn_volumes_disconnect(v, &b, &err);
    check(ok, "nfs-disconnect-b", "%s", err ? err->message : "done");
    g_autofree char *n3 = sh_out(count);
    check(strcmp(n3, "0") == 0, "nfs-unmounted", "%s mount(s) left", n3);
    vn_volume_disk_clear(&da);
    vn_volume_disk_clear(&db);
    return failures ? 1 : 0;
}

static int run_vlan(char **argv)
{
    g_autofree char *mapping = g_strdup_printf("physnet1:%s", argv[0]);
    char *mappings[] = { mapping, NULL };
    int vid = atoi(argv[1]);
    g_autoptr(GError) err = NULL;
    g_autoptr(VnNetHost) h = vn_net_host_new(mappings, 1500, &err);
    VnNetSegment seg = { "0f3c9a2e-vlan-net", "physnet1", vid, 1400 };
    g_autofree char *br = NULL;
    g_autofree char *sub = vn_net_vlan_name(argv[0], vid);

    if (!h) {
        check(FALSE, "vlan-setup", "%s", err->message);
        return 1;
    }
    br = vn_net_acquire(h, &seg, "port-1", &err);
    check(br != NULL, "vlan-bridge", "%s", br ? br : err->message);
    if (!br)
        return 1;
    g_autofree char *proc = g_strdup_printf("/proc/net/vlan/%s", sub);
    g_autofree char *info = NULL;
    g_file_get_contents(proc, &info, NULL, NULL);
    g_autofree char *want = g_strdup_printf("VID: %d", vid);
    check(info && strstr(info, want), "vlan-subinterface", "%s: %s", sub, info ? want : "missing");
    g_autofree char *master = g_strdup_printf("/sys/class/net/%s/master", sub);
    g_autofree char *m = g_file_read_link(master, NULL);
    check(m && g_str_has_suffix(m, br), "vlan-enslaved", "%s in %s", sub, m ? m : "nothing");
    g_autofree char *mtu_path = g_strdup_printf("/sys/class/net/%s/mtu", br);
    g_autofree char *mtu = NULL;
    g_file_get_contents(mtu_path, &mtu, NULL, NULL);
    check(mtu && atoi(mtu) == 1400, "vlan-mtu", "%s mtu %s", br, mtu ? g_strstrip(mtu) : "?");
    /* traffic: ARP from an address on the bridge leaves IFACE tagged (captured outside) */
    g_autofree char *cmd = g_strdup_printf("ip link set %s up && ip addr add %s dev %s && "
                                           "ping -c 5 -W 1 %s > /dev/null 2>&1",
                                           br, argv[2], br, argv[3]);
    sh(cmd);
    printf("VMTEST vlan-traffic sent\n");
    g_autofree char *flush = g_strdup_printf("ip addr flush dev %s", br);
    sh(flush);
    vn_net_release(h, seg.network_id, "port-1");
    g_autofree char *brp = g_strdup_printf("/sys/class/net/%s", br);
    g_autofree char *subp = g_strdup_printf("/sys/class/net/%s", sub);
    check(!g_file_test(brp, G_FILE_TEST_EXISTS) && !g_file_test(subp, G_FILE_TEST_EXISTS),
          "vlan-removed", "bridge and sub-interface gone with the last use");
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    int rc = 2;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 7 && strcmp(argv[1], "iscsi") == 0)
        rc = run_iscsi(argv + 2);
    else if (argc >= 3 && strcmp(argv[1], "nfs") == 0)
        rc = run_nfs(argv + 2);
    else if (argc >= 6 && strcmp(argv[1], "vlan") == 0)
        rc = run_vlan(argv + 2);
    else
        fprintf(stderr, "usage: vn-vmtest iscsi P1 P2 IQN USER PASSWORD | nfs EXPORT | "
                        "vlan IFACE VID ADDRESS PEER\n");
    if (rc != 2)
        printf("VMTEST %s %s\n", argv[1], rc == 0 ? "PASS" : "FAIL");
    return rc;
}
