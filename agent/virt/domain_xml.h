/* agent/virt/domain_xml.h - domain XML, built and read with libxml2 (never by string
 * concatenation), from a plain description of the guest.
 *
 * Every domain carries its instance's identity in <metadata> (namespace
 * VN_DOMAIN_XML_NS), so the domain alone says whose it is: the start-up reconciliation
 * needs nothing else.  The builder is pure: it is unit-tested with golden files. */
#pragma once

#include <glib.h>

#define VN_DOMAIN_XML_NS     "http://virtnode.org/xmlns/instance/1.0"
#define VN_DOMAIN_XML_PREFIX "virtnode"

/* The instance's identity as the domain's <metadata> records it: written by the builder,
 * read back by the parser. */
typedef struct {
    char *instance_name; /* the tenant's name for it */
    char *project_id;
    char *user_id;
    char *request_id;
    char *flavor_name;
    int vcpus;
    int memory_mb;
    int root_gb;
    int ephemeral_gb;
    int swap_mb;
    char *image_id;
    char *image_sha256;
} VnDomainMeta;

/* Frees the strings of @m. */
void vn_domain_meta_clear(VnDomainMeta *m);

typedef struct {
    char *path;         /* the disk file */
    char *format;       /* "qcow2" or "raw" */
    char *backing_path; /* the cached base (read-only, shared), or NULL */
    char *backing_format;
    char *target; /* "vda", "vdb", ... */
} VnDiskSpec;

/* A volume's disk, from the plain description storage/ gives (file, block device or
 * QEMU's own network client). */
typedef enum { VN_VOLDISK_FILE, VN_VOLDISK_BLOCK, VN_VOLDISK_NETWORK } VnVolDiskType;

typedef struct {
    char *serial; /* the volume id: what the guest sees as the disk's serial */
    char *target; /* "vdb", "sda", ... */
    char *bus;    /* "virtio" or "scsi" */
    VnVolDiskType kind;
    char *path;          /* file or block */
    char *protocol;      /* network: "nfs" or "iscsi" */
    char *name;          /* network source name */
    char *host;          /* network */
    int port;            /* network; 0: the protocol's */
    char *initiator;     /* iscsi network */
    char *auth_username; /* iscsi network with CHAP */
    char *secret_usage;  /* the libvirt secret holding the password */
    char *format;        /* "raw" or "qcow2" */
    gboolean read_only;
    gboolean discard;
} VnVolDiskSpec;

void vn_vol_disk_spec_free(VnVolDiskSpec *d);

/* The <disk> element of a volume alone, as a document (for hot-plug).  Caller frees. */
char *vn_domain_xml_volume(const VnVolDiskSpec *d);

/* libvirt's push-mode backup of disk @target alone into a new qcow2 file @path.  Caller
 * frees. */
char *vn_backup_xml(const char *target, const char *path);

/* A directory storage pool @name over the folder @path.  Caller frees. */
char *vn_dir_pool_xml(const char *name, const char *path);

/* A raw storage volume @name of @capacity bytes, mode 0600.  Caller frees. */
char *vn_raw_volume_xml(const char *name, guint64 capacity);

/* A guest network port on a Linux bridge (libvirt makes the tap and puts it there). */
typedef struct {
    char *mac;
    char *bridge;
    char *tap;
    int mtu;            /* 0: the bridge's */
    char *filter;       /* nwfilter name (port security), or NULL */
    char **filter_ips;  /* the port's addresses, the filter's $IP (NULL-terminated) */
    guint64 in_average; /* <bandwidth> KiB/s, KiB; 0: none */
    guint64 in_peak;
    guint64 in_burst;
    guint64 out_average;
    guint64 out_peak;
    guint64 out_burst;
} VnIfaceSpec;

typedef struct {
    /* identity */
    char *uuid;
    char *domain_name; /* e.g. "instance-<uuid>" */
    gint64 created_at;
    VnDomainMeta meta; /* also sizes the guest: vcpus, memory_mb */

    /* hypervisor */
    char *domain_type; /* "kvm" or "qemu" */
    char *cpu_mode;    /* NULL (none), "host-model", "host-passthrough", "custom" */
    char *cpu_model;   /* for custom */

    GPtrArray *disks;   /* VnDiskSpec* */
    GPtrArray *ifaces;  /* VnIfaceSpec*, in guest device order */
    GPtrArray *volumes; /* VnVolDiskSpec*; a boot volume (target vda/sda) comes first and
                         * the guest boots from it */
    char *config_drive; /* ISO 9660 image attached as a read-only CD-ROM, or NULL */
    char *console_log;  /* serial console file */

    /* security labels */
    int dac_uid;     /* > 0: QEMU runs as +uid:+uid and backing files are not relabelled */
    char *mac_model; /* "selinux"/"apparmor": a dynamic label of that model; NULL none */

    /* key=value strings for the guest (SMBIOS OEM strings "virtnode:key=value") */
    GHashTable *guest_strings;
} VnDomainSpec;

VnDomainSpec *vn_domain_spec_new(void);
void vn_domain_spec_free(VnDomainSpec *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnDomainSpec, vn_domain_spec_free)
void vn_domain_spec_add_disk(VnDomainSpec *s, const char *path, const char *format,
                             const char *backing_path, const char *backing_format,
                             const char *target);

/* Adds a copy of @i. */
void vn_domain_spec_add_iface(VnDomainSpec *s, const VnIfaceSpec *i);
void vn_iface_spec_free(VnIfaceSpec *i);

/* The <interface> element alone, as a document (for hot-plug).  Caller frees. */
char *vn_domain_xml_iface(const VnIfaceSpec *i);

/* The domain XML for @spec.  Caller frees. */
char *vn_domain_xml_build(const VnDomainSpec *spec, GError **error);

/* What the agent reads back from a domain's XML: its metadata and the files it uses. */
typedef struct {
    char *uuid;          /* from <uuid> */
    char *name;          /* from <name> */
    gboolean ours;       /* it carries our metadata */
    char *instance_uuid; /* from the metadata */
    VnDomainMeta meta;
    GPtrArray *disk_paths; /* char*: file sources of disks (top images) */
    char *console_log;
    char *dac_label; /* "+uid:+gid" of a static DAC seclabel, or NULL */
} VnDomainInfo;

void vn_domain_info_free(VnDomainInfo *i);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnDomainInfo, vn_domain_info_free)

/* Reads @xml (from libvirt: validated like any outside input). */
VnDomainInfo *vn_domain_xml_parse(const char *xml, gsize len, GError **error);

/* The destination XML of a migration: every file path under @from_dir moved under
 * @to_dir, and the static DAC identity changed to @dac_uid (> 0) picked by the
 * destination.  Caller frees. */
char *vn_domain_xml_for_destination(const char *xml, const char *from_dir, const char *to_dir,
                                    int dac_uid, GError **error);

/* The guest's <cpu> element of a domain's (migratable) XML, as its own document; "" when
 * the domain states none (the hypervisor's default model).  Caller frees. */
char *vn_domain_xml_cpu(const char *xml, gsize len, GError **error);

/* The target ("vde") of the disk of @xml whose <serial> is @serial, or NULL.  Caller
 * frees. */
char *vn_domain_xml_disk_by_serial(const char *xml, gsize len, const char *serial);

/* TRUE when @xml (from a peer) is a well-formed <cpu> document within the reader's
 * bounds; VN_VIRT_ERROR_XML otherwise. */
gboolean vn_cpu_xml_check(const char *xml, gsize len, GError **error);
