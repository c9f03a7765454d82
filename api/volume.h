/* api/volume.h - a guest's volumes as the controller sends them: Cinder's connection info
 * (NFS or iSCSI, with CHAP and several portals for multipath) inside a block device mapping
 * entry.  Validated once, completely, before anything is connected; every error names the
 * field and never quotes a secret.
 *
 * The CHAP password is the one secret: it lives in memory for the connect, then in
 * libvirt's secret store (QEMU's initiator) or open-iscsi's node record (the kernel's).
 * vn_volume_spec_to_json leaves it out, so records, replies and notifications never carry
 * it. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

#define VN_VOLUMES_MAX 16

typedef enum { VN_VOL_NFS, VN_VOL_ISCSI, VN_VOL_LAST } VnVolumeType;

/* One iSCSI path: a portal and the target and LUN behind it. */
typedef struct {
    char *host; /* address or name, without brackets */
    int port;
    char *iqn;
    int lun;
} VnIscsiPath;

typedef struct {
    VnVolumeType type;
    gboolean read_only; /* access_mode "ro" */
    gboolean discard;   /* pass the guest's discards (unmap) down */

    /* nfs */
    char *export;  /* "host:/path" as given (the host canonical) */
    char *server;  /* the host part, without brackets */
    char *path;    /* the path part */
    char *name;    /* the volume's file in the export */
    char *options; /* mount options, or NULL */
    char *format;  /* "raw" or "qcow2" */

    /* iscsi */
    GPtrArray *paths; /* VnIscsiPath*: target_portal first, then the other portals */
    char *auth_username;
    char *auth_password; /* secret: NULL in a spec read back from a record */
} VnConnInfo;

typedef struct {
    char *volume_id;   /* [A-Za-z0-9-], 1-64 */
    int boot_index;    /* 0: the guest boots from it; -1: none */
    char *device_name; /* "vdb", "sdb", ... (no /dev/), or NULL: chosen by the agent */
    char *bus;         /* "virtio" or "scsi" */
    gboolean delete_on_termination;
    VnConnInfo conn;
} VnVolumeSpec;

VnVolumeSpec *vn_volume_spec_new(void);
void vn_volume_spec_free(VnVolumeSpec *v);
/* A copy, the secret included. */
VnVolumeSpec *vn_volume_spec_copy(const VnVolumeSpec *v);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnVolumeSpec, vn_volume_spec_free)

/* One block_device_mapping entry (or attach_volume's block_device) at @path. */
VnVolumeSpec *vn_volume_spec_parse(json_object *obj, const char *path, GError **error);

/* A block_device_mapping list (at most VN_VOLUMES_MAX; volume ids and device names unique,
 * at most one boot volume). */
GPtrArray *vn_volume_specs_parse(json_object *list, const char *path, GError **error);

/* The same list as a record keeps it (vn_volume_specs_to_json): the CHAP password absent. */
GPtrArray *vn_volume_specs_from_record(json_object *list, const char *path, GError **error);

/* The entry as JSON in the request's form, without the secret (what records keep).  A
 * spec read back from it has auth_password NULL. */
json_object *vn_volume_spec_to_json(const VnVolumeSpec *v);
json_object *vn_volume_specs_to_json(const GPtrArray *vols);

/* "nfs" or "iscsi". */
const char *vn_volume_type_name(VnVolumeType t);

/* The boot volume of @vols (boot_index 0), or NULL. */
const VnVolumeSpec *vn_volume_specs_boot(const GPtrArray *vols);
