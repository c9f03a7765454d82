/* storage/volume.h - volume connectors, as os-brick gives nova-compute: connect a volume
 * to this host and describe the disk the guest gets, disconnect it, find its size, probe
 * its health.  Four connectors behind one ops table:
 *
 *   nfs, kernel   the export mounted once at <nfs_mount_point_base>/<hash(export)>, shared
 *                 by every volume on it (uses recorded on disk, so they survive restarts),
 *                 NFS 4.2 -> 4.1 -> 3 unless the options pin a version, unmounted when its
 *                 last volume leaves; the guest gets the volume's file
 *   nfs, qemu     QEMU's own NFS client (libnfs): nothing on the host; a network disk
 *   iscsi, kernel open-iscsi and dm-multipath: logins to every portal in parallel, a
 *                 targeted scan of the LUN, the WWID from the device, multipath -a and
 *                 multipathd add path, the map awaited; on disconnect the map flushed
 *                 first, then the paths deleted, and only sessions no other volume uses
 *                 logged out; the guest gets the map (or the one path's device)
 *   iscsi, qemu   QEMU's own initiator (libiscsi), one path, CHAP through a libvirt secret
 *
 * Every external program goes through one runner (argv only, time limit, retries); unit
 * tests give another runner and a fake sysfs.  Connectors return plain descriptions that
 * agent/virt renders; they never build XML.
 *
 * Thread safety: a VnVolumes serialises its connects and disconnects with one lock (the
 * session and mount reference counts are host-wide); the configuration is immutable
 * after vn_volumes_new. */
#pragma once

#include <glib.h>

#include "storage/runner.h"

typedef struct {
    const char *host; /* address or name, no brackets */
    int port;
    const char *iqn;
    int lun;
} VnVolPath;

/* What to connect (borrowed strings, the caller's). */
typedef struct {
    const char *volume_id;
    gboolean iscsi; /* else NFS */
    gboolean read_only;
    gboolean discard;
    /* nfs */
    const char *export; /* "server:/path" */
    const char *server;
    const char *path;
    const char *name;
    const char *options; /* the volume's mount options, or NULL */
    const char *format;  /* "raw" or "qcow2" */
    /* iscsi */
    const VnVolPath *paths; /* the first is the target portal */
    guint n_paths;
    const char *chap_username; /* NULL: no CHAP */
    const char *chap_password; /* may be NULL for a disconnect */
} VnVolumeRequest;

typedef enum { VN_VOL_DISK_FILE, VN_VOL_DISK_BLOCK, VN_VOL_DISK_NETWORK } VnVolDiskKind;

/* The disk a connected volume gives the guest. */
typedef struct {
    VnVolDiskKind kind;
    char *path;          /* file or block device */
    char *protocol;      /* network: "nfs" or "iscsi" */
    char *name;          /* network: "/export/path/file" or "iqn/lun" */
    char *host;          /* network */
    int port;            /* network; 0: the protocol's */
    char *initiator;     /* iscsi network: this host's initiator name */
    char *auth_username; /* iscsi network with CHAP: the secret is the caller's to define */
    char *format;        /* "raw" or "qcow2" */
    gboolean read_only;
    gboolean discard;
    char *health_key; /* what the health probe watches: "nfs:<export>", "iscsi:<wwid|iqn>" */
} VnVolumeDisk;

void vn_volume_disk_clear(VnVolumeDisk *d);

typedef enum { VN_VOL_DRIVER_KERNEL, VN_VOL_DRIVER_QEMU } VnVolDriver;

typedef struct {
    char *state_dir;            /* uses of mounts and sessions: <state_dir>/{nfs,iscsi}/ */
    char *nfs_mount_point_base; /* kernel NFS mounts */
    char *nfs_mount_options;    /* added to every NFS mount, or NULL */
    VnVolDriver nfs_driver;
    VnVolDriver iscsi_driver;
    gboolean use_multipath; /* kernel iSCSI with several portals */
    char *initiator_name;   /* this host's iSCSI initiator IQN */
    char *sys_root;         /* "/" (sysfs, /dev, /proc); a fake tree in unit tests */
    int command_timeout;    /* seconds per external command */
    int attach_timeout;     /* seconds to wait for a device or map to appear */
    int attempts;           /* tries of a login, scan or mount */
    VnStorRunFunc run;      /* NULL: vn_stor_run_status */
    gpointer run_data;
} VnVolumesConfig;

typedef struct VnVolumes VnVolumes;

/* Copies @cfg. */
VnVolumes *vn_volumes_new(const VnVolumesConfig *cfg, GError **error);
void vn_volumes_free(VnVolumes *v);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnVolumes, vn_volumes_free)

typedef struct {
    const char *name; /* "nfs-kernel", "nfs-qemu", "iscsi-kernel", "iscsi-qemu" */
    /* Connects @r (idempotent: a second connect of the same volume is a no-op that
     * describes the same disk) and describes its disk in @out. */
    gboolean (*connect)(VnVolumes *v, const VnVolumeRequest *r, VnVolumeDisk *out, GError **error);
    /* Disconnects @r; what other volumes use stays.  A volume not connected is no error. */
    gboolean (*disconnect)(VnVolumes *v, const VnVolumeRequest *r, GError **error);
    /* The volume's size in bytes as this host sees it now (after the array grew it). */
    gboolean (*extend)(VnVolumes *v, const VnVolumeRequest *r, guint64 *size, GError **error);
    /* A timed probe of the storage behind @r: FALSE with VN_STOR_ERROR_TIMEOUT/_IO when it
     * does not answer. */
    gboolean (*check)(VnVolumes *v, const VnVolumeRequest *r, GError **error);
} VnVolumeConnector;

/* The connector this host's configuration uses for @r. */
const VnVolumeConnector *vn_volumes_connector(VnVolumes *v, const VnVolumeRequest *r);

/* The connector's calls, under the host-wide lock. */
gboolean vn_volumes_connect(VnVolumes *v, const VnVolumeRequest *r, VnVolumeDisk *out,
                            GError **error);
gboolean vn_volumes_disconnect(VnVolumes *v, const VnVolumeRequest *r, GError **error);
gboolean vn_volumes_check(VnVolumes *v, const VnVolumeRequest *r, GError **error);
gboolean vn_volumes_extend(VnVolumes *v, const VnVolumeRequest *r, guint64 *size, GError **error);

/* The sweep after a restart (and periodically): drops the recorded uses, older than
 * @min_age_s seconds (a connect under way is younger), of volumes not in @live (volume
 * ids), then unmounts exports and logs out of sessions that this agent made and no volume
 * uses any more, flushing their maps and deleting their paths first.  Returns how many
 * mounts and sessions it removed. */
guint vn_volumes_sweep(VnVolumes *v, GHashTable *live, int min_age_s);

/* The volume ids with a recorded use on this host (for the sweep and for tests). */
GPtrArray *vn_volumes_recorded(VnVolumes *v);

/* Where the kernel connector mounts @export.  Caller frees. */
char *vn_volumes_nfs_mount_point(VnVolumes *v, const char *export);
