/* agent/ops/guest.c - a guest's files, domain description and labels (see guest.h). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/ops/guest.h"
#include "agent/ops/ports.h"
#include "agent/ops/volumes.h"
#include "agent/virt/domain.h"
#include "agent/virt/domain_xml.h"
#include "agent/virt/virt.h"
#include "storage/disk.h"
#include "storage/stor_error.h"

#define MAX_GUEST_STRINGS 64

char *vn_guest_file(VnAgent *a, const char *uuid, const char *name)
{
    g_autofree char *dir = vn_agent_instance_dir(a, uuid);

    return g_build_filename(dir, name, NULL);
}

char *vn_guest_domain_name(const char *uuid)
{
    return g_strdup_printf("instance-%s", uuid);
}

gboolean vn_guest_prepare_dir(VnAgent *a, const char *uuid, int gid, GError **error)
{
    g_autofree char *dir = vn_agent_instance_dir(a, uuid);
    g_autofree char *console = g_build_filename(dir, VN_GUEST_CONSOLE, NULL);
    mode_t mode = gid > 0 ? 0750 : 0711;
    int fd;

    if (g_mkdir_with_parents(dir, mode) < 0 ||
        chown(dir, (uid_t)-1, gid > 0 ? (gid_t)gid : 0) < 0 || chmod(dir, mode) < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "preparing '%s': %s", dir,
                    g_strerror(errno));
        return FALSE;
    }
    /* created by the agent, so its owner is known even where dynamic ownership is off */
    fd = open(console, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "creating '%s': %s", console,
                    g_strerror(errno));
        return FALSE;
    }
    close(fd);
    return TRUE;
}

/* A one-line note of the agent's beside the disks (0600, written whole or not at all).  A
 * new note is one write to a file made for it; one that exists is replaced through a
 * temporary file, so that it is the old line or the new one. */
static gboolean write_note(VnAgent *a, const char *uuid, const char *name, const char *value,
                           const char *what, GError **error)
{
    g_autofree char *path = vn_guest_file(a, uuid, name);
    g_autofree char *text = g_strconcat(value, "\n", NULL);
    gssize len = (gssize)strlen(text);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

    if (fd >= 0) {
        gssize n = write(fd, text, len);
        int err = n < 0 ? errno : n != len ? EIO : 0;
        if (close(fd) != 0 && !err)
            err = errno;
        if (!err)
            return TRUE;
        unlink(path);
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err), "writing '%s': %s", path,
                    g_strerror(err));
    } else if (errno == EEXIST) {
        if (g_file_set_contents_full(path, text, len, G_FILE_SET_CONTENTS_CONSISTENT, 0600, error))
            return TRUE;
    } else {
        int err = errno;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err), "creating '%s': %s", path,
                    g_strerror(err));
    }
    g_prefix_error(error, "recording the %s of %s: ", what, uuid);
    return FALSE;
}

static char *read_note(const char *instance_dir, const char *name)
{
    g_autofree char *path = g_build_filename(instance_dir, name, NULL);
    g_autofree char *text = NULL;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return NULL;
    g_strchomp(text);
    return *text ? g_steal_pointer(&text) : NULL;
}

gboolean vn_guest_record_backing(VnAgent *a, const char *uuid, const char *base, GError **error)
{
    return write_note(a, uuid, VN_GUEST_BACKING, base, "base", error);
}

char *vn_guest_read_backing(const char *instance_dir)
{
    g_autofree char *text = read_note(instance_dir, VN_GUEST_BACKING);

    return text && *text == '/' ? g_steal_pointer(&text) : NULL;
}

gboolean vn_guest_record_owner(VnAgent *a, const char *uuid, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);

    return write_note(a, uuid, VN_GUEST_OWNER, cfg->host, "owner", error);
}

gboolean vn_guest_owned_here(VnAgent *a, const char *uuid)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autofree char *dir = vn_agent_instance_dir(a, uuid);
    g_autofree char *owner = read_note(dir, VN_GUEST_OWNER);

    return g_strcmp0(owner, cfg->host) == 0;
}

static gboolean guest_string_ok(const char *s, gboolean key)
{
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return FALSE;
        if (key && !g_ascii_isalnum(*p) && *p != '.' && *p != '_' && *p != '-')
            return FALSE;
    }
    return *s != '\0' || !key;
}

static const char *cpu_mode_name(const VnConfig *cfg)
{
    switch (cfg->cpu_mode) {
    case VN_CPU_MODE_HOST_MODEL:
        return "host-model";
    case VN_CPU_MODE_HOST_PASSTHROUGH:
        return "host-passthrough";
    case VN_CPU_MODE_CUSTOM:
        return "custom";
    case VN_CPU_MODE_NONE:
        return NULL;
    default:
        /* TCG cannot provide the host's model; KVM guests get the closest migratable one */
        return cfg->virt_type == VN_VIRT_TYPE_KVM ? "host-model" : NULL;
    }
}

/* Adds the disk file @name of the instance when it exists, with the backing file the
 * agent's record says (@backing, or none).  The qcow2 header is written by the guest's
 * QEMU and so never trusted: a header naming another backing file is reported and
 * overridden (libvirt hands QEMU the chain from the XML). */
static gboolean add_disk(VnDomainSpec *s, const char *uuid, const char *dir, const char *name,
                         const char *target, gboolean required, const char *backing,
                         const char *backing_format, GError **error)
{
    g_autofree char *path = g_build_filename(dir, name, NULL);
    g_autofree char *header = NULL;
    g_autoptr(GError) err = NULL;

    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
        if (required) {
            g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_XML, "disk '%s' is missing", path);
            return FALSE;
        }
        return TRUE;
    }
    header = vn_disk_backing_file(path, &err);
    if (g_strcmp0(header, backing) != 0)
        g_warning("instance %s: the header of '%s' names the backing file '%s', the record "
                  "says '%s': the header is ignored (rewritten by the guest's QEMU?)",
                  uuid, path, header ? header : (err ? err->message : "none"),
                  backing ? backing : "none");
    vn_domain_spec_add_disk(s, path, "qcow2", backing, backing ? backing_format : NULL, target);
    return TRUE;
}

VnDomainSpec *vn_guest_domain_spec(VnAgent *a, const VnInstanceRecord *rec, int dac_uid,
                                   GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(VnDomainSpec) s = vn_domain_spec_new();
    g_autofree char *dir = vn_agent_instance_dir(a, rec->uuid);
    GHashTableIter it;
    gpointer k, v;
    guint n = 0;

    s->uuid = g_strdup(rec->uuid);
    s->domain_name = vn_guest_domain_name(rec->uuid);
    s->meta.instance_name = g_strdup(rec->name);
    s->meta.project_id = g_strdup(rec->project_id);
    s->meta.user_id = g_strdup(rec->user_id);
    s->meta.request_id = g_strdup(rec->request_id);
    s->created_at = rec->created_at;
    s->meta.flavor_name = g_strdup(rec->flavor.name);
    s->meta.vcpus = rec->flavor.vcpus;
    s->meta.memory_mb = rec->flavor.memory_mb;
    s->meta.root_gb = rec->flavor.root_gb;
    s->meta.ephemeral_gb = rec->flavor.ephemeral_gb;
    s->meta.swap_mb = rec->flavor.swap_mb;
    s->meta.image_id = g_strdup(rec->image.id);
    s->meta.image_sha256 = g_strdup(rec->image.sha256);
    s->domain_type = g_strdup(vn_virt_type_name(cfg->virt_type));
    s->cpu_mode = g_strdup(cpu_mode_name(cfg));
    if (s->cpu_mode && strcmp(s->cpu_mode, "custom") == 0)
        s->cpu_model = g_strdup(cfg->cpu_model);
    s->console_log = g_build_filename(dir, VN_GUEST_CONSOLE, NULL);
    s->dac_uid = dac_uid;
    s->mac_model = g_strdup(a->mac_model);
    /* the root disk's base is the cached image of the record's image, in the format the
     * record declares; the other disks have none */
    g_autofree char *base = rec->image.id ? vn_image_cache_path(a->images, rec->image.id) : NULL;
    gboolean boot_volume = vn_volume_specs_boot(rec->volumes) != NULL;
    if ((!boot_volume && !add_disk(s, rec->uuid, dir, VN_GUEST_ROOT_DISK, "vda", TRUE, base,
                                   rec->image.disk_format, error)) ||
        !add_disk(s, rec->uuid, dir, VN_GUEST_EPHEMERAL_DISK, "vdb", FALSE, NULL, NULL, error) ||
        !add_disk(s, rec->uuid, dir, VN_GUEST_SWAP_DISK, "vdc", FALSE, NULL, NULL, error))
        return NULL;
    /* volumes: connected again if needed (a reboot or start after a host restart) */
    for (guint i = 0; i < rec->volumes->len; i++) {
        VnVolDiskSpec *d = NULL;
        if (!vn_vols_connect(a, g_ptr_array_index(rec->volumes, i), &d, error))
            return NULL;
        g_ptr_array_add(s->volumes, d);
    }
    for (guint i = 0; i < rec->ports->len; i++) {
        VnIfaceSpec iface;
        vn_ports_iface(g_ptr_array_index(rec->ports, i), &iface);
        vn_domain_spec_add_iface(s, &iface);
        vn_ports_iface_clear(&iface);
    }
    g_autofree char *drive = g_build_filename(dir, VN_GUEST_CONFIG_DRIVE, NULL);
    if (g_file_test(drive, G_FILE_TEST_IS_REGULAR))
        s->config_drive = g_steal_pointer(&drive);
    g_hash_table_iter_init(&it, rec->metadata);
    while (g_hash_table_iter_next(&it, &k, &v) && n < MAX_GUEST_STRINGS) {
        if (!guest_string_ok(k, TRUE) || !guest_string_ok(v, FALSE))
            continue;
        g_hash_table_insert(s->guest_strings, g_strdup(k), g_strdup(v));
        n++;
    }
    return g_steal_pointer(&s);
}

static gboolean label_fail(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static gboolean label_fail(GError **error, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *m = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, VN_VIRT_ERROR, VN_VIRT_ERROR_LABEL, m);
    return FALSE;
}

char *vn_guest_verify_confinement(VnAgent *a, const VnInstanceRecord *rec, int dac_uid,
                                  GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(GPtrArray) labels = vn_domain_security_labels(a->virt, rec->uuid, error);
    g_autofree char *want_dac = NULL;
    gboolean dac_seen = FALSE, mac_seen = FALSE;

    if (!labels)
        return NULL;
    if (dac_uid > 0)
        want_dac = g_strdup_printf("dac:+%d:+%d", dac_uid, dac_uid);
    for (guint i = 0; i < labels->len; i++) {
        const char *l = g_ptr_array_index(labels, i);
        g_autofree char *owner = NULL;
        if (g_str_has_prefix(l, "dac:")) {
            dac_seen = TRUE;
            if (want_dac && strcmp(l, want_dac) != 0)
                return label_fail(error, "the guest runs as '%s', not its own identity '%s'", l + 4,
                                  want_dac + 4),
                       NULL;
            if (cfg->require_confinement &&
                (strcmp(l, "dac:+0:+0") == 0 || strcmp(l, "dac:0:0") == 0))
                return label_fail(error, "QEMU runs as root"), NULL;
        }
        if (a->mac_model && g_str_has_prefix(l, a->mac_model) && l[strlen(a->mac_model)] == ':') {
            if (!l[strlen(a->mac_model) + 1])
                return label_fail(error, "the guest has an empty %s label", a->mac_model), NULL;
            mac_seen = TRUE;
        }
        /* a per-guest identity and a MAC label must be the guest's own; labels of other
         * models (a test driver's) are not meant to be unique */
        gboolean own = (dac_uid > 0 && g_str_has_prefix(l, "dac:")) ||
                       (a->mac_model && g_str_has_prefix(l, a->mac_model));
        if (own && (owner = vn_instance_store_label_owner(a->store, rec->uuid, l)))
            return label_fail(error, "security label '%s' is also the label of instance %s", l,
                              owner),
                   NULL;
    }
    if (want_dac && !dac_seen)
        return label_fail(error, "no DAC label was applied to the guest"), NULL;
    if (a->mac_model && !mac_seen)
        return label_fail(error, "no %s label was applied to the guest", a->mac_model), NULL;
    if (cfg->require_confinement && !want_dac && !mac_seen)
        return label_fail(error, "the guest is not confined (no per-guest identity, no MAC "
                                 "label) and require_confinement is set"),
               NULL;
    /* beyond labels: QEMU's own system-call filter (libvirt's seccomp_sandbox), checked
     * where the agent can see the process (the local system libvirt) */
    if (g_str_has_prefix(cfg->libvirt_uri, "qemu:///system")) {
        int mode = vn_domain_seccomp_mode(rec->uuid);
        if (mode == 2)
            g_ptr_array_add(labels, g_strdup("seccomp:filter"));
        else if (cfg->require_confinement)
            return label_fail(error, mode == 0 ? "QEMU runs without its seccomp sandbox "
                                                 "(seccomp_sandbox = 0 in qemu.conf?)"
                                               : "QEMU's seccomp sandbox cannot be verified"),
                   NULL;
    }
    g_ptr_array_add(labels, NULL);
    return g_strjoinv(";", (char **)labels->pdata);
}

gboolean vn_guest_remove(VnAgent *a, const char *uuid, GError **error)
{
    g_autofree char *dir = vn_agent_instance_dir(a, uuid);

    if (!vn_domain_undefine(a->virt, uuid, error))
        return FALSE;
    return vn_disk_remove_tree(dir, error);
}

gboolean vn_guest_define_and_start(VnAgent *a, const VnInstanceRecord *rec, GCancellable *cancel,
                                   char **labels, GError **error)
{
    g_autoptr(VnDomainSpec) ds = NULL;
    g_autofree char *xml = NULL;

    if (!vn_guest_prepare_dir(a, rec->uuid, rec->guest_uid, error))
        return FALSE;
    ds = vn_guest_domain_spec(a, rec, rec->guest_uid, error);
    if (!ds || !(xml = vn_domain_xml_build(ds, error)) ||
        !vn_domain_redefine(a->virt, xml, error) || !vn_domain_start(a->virt, rec->uuid, error) ||
        !vn_domain_wait_state(a->virt, rec->uuid, VN_POWER_RUNNING, 30, cancel, error))
        return FALSE;
    *labels = vn_guest_verify_confinement(a, rec, rec->guest_uid, error);
    return *labels != NULL;
}

VnPowerState vn_guest_power(VnAgent *a, const char *uuid)
{
    VnPowerState p = VN_POWER_NOSTATE;
    g_autoptr(GError) err = NULL;

    if (!vn_domain_power_state(a->virt, uuid, &p, &err))
        g_debug("power state of %s: %s", uuid, err->message);
    return p;
}
