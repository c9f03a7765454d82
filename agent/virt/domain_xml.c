/* agent/virt/domain_xml.c - domain XML with libxml2 (see domain_xml.h). */
#include <string.h>

#include <libxml/xpathInternals.h>

#include "agent/virt/domain_xml.h"
#include "agent/virt/virt.h"
#include "agent/virt/xmlutil.h"

static void disk_free(VnDiskSpec *d)
{
    g_free(d->path);
    g_free(d->format);
    g_free(d->backing_path);
    g_free(d->backing_format);
    g_free(d->target);
    g_free(d);
}

void vn_domain_meta_clear(VnDomainMeta *m)
{
    g_clear_pointer(&m->instance_name, g_free);
    g_clear_pointer(&m->project_id, g_free);
    g_clear_pointer(&m->user_id, g_free);
    g_clear_pointer(&m->request_id, g_free);
    g_clear_pointer(&m->flavor_name, g_free);
    g_clear_pointer(&m->image_id, g_free);
    g_clear_pointer(&m->image_sha256, g_free);
}

VnDomainSpec *vn_domain_spec_new(void)
{
    VnDomainSpec *s = g_new0(VnDomainSpec, 1);

    s->disks = g_ptr_array_new_with_free_func((GDestroyNotify)disk_free);
    s->ifaces = g_ptr_array_new_with_free_func((GDestroyNotify)vn_iface_spec_free);
    s->volumes = g_ptr_array_new_with_free_func((GDestroyNotify)vn_vol_disk_spec_free);
    s->guest_strings = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    return s;
}

void vn_domain_spec_free(VnDomainSpec *s)
{
    if (!s)
        return;
    g_free(s->uuid);
    g_free(s->domain_name);
    vn_domain_meta_clear(&s->meta);
    g_free(s->domain_type);
    g_free(s->cpu_mode);
    g_free(s->cpu_model);
    g_ptr_array_unref(s->disks);
    g_ptr_array_unref(s->ifaces);
    g_ptr_array_unref(s->volumes);
    g_free(s->config_drive);
    g_free(s->console_log);
    g_free(s->mac_model);
    g_hash_table_unref(s->guest_strings);
    g_free(s);
}

void vn_iface_spec_free(VnIfaceSpec *i)
{
    if (!i)
        return;
    g_free(i->mac);
    g_free(i->bridge);
    g_free(i->tap);
    g_free(i->filter);
    g_strfreev(i->filter_ips);
    g_free(i);
}

void vn_domain_spec_add_iface(VnDomainSpec *s, const VnIfaceSpec *i)
{
    VnIfaceSpec *c = g_new0(VnIfaceSpec, 1);

    *c = *i;
    c->mac = g_strdup(i->mac);
    c->bridge = g_strdup(i->bridge);
    c->tap = g_strdup(i->tap);
    c->filter = g_strdup(i->filter);
    c->filter_ips = g_strdupv(i->filter_ips);
    g_ptr_array_add(s->ifaces, c);
}

void vn_domain_spec_add_disk(VnDomainSpec *s, const char *path, const char *format,
                             const char *backing_path, const char *backing_format,
                             const char *target)
{
    VnDiskSpec *d = g_new0(VnDiskSpec, 1);

    d->path = g_strdup(path);
    d->format = g_strdup(format);
    d->backing_path = g_strdup(backing_path);
    d->backing_format = g_strdup(backing_format);
    d->target = g_strdup(target);
    g_ptr_array_add(s->disks, d);
}

/* ------------------------------------------------------------------ building */

static xmlNodePtr child(xmlNodePtr parent, const char *name, const char *text)
{
    return xmlNewTextChild(parent, NULL, BAD_CAST name, text ? BAD_CAST text : NULL);
}

static xmlNodePtr childf(xmlNodePtr parent, const char *name, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
static xmlNodePtr childf(xmlNodePtr parent, const char *name, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    return child(parent, name, text);
}

static void prop(xmlNodePtr node, const char *name, const char *value)
{
    if (value)
        xmlNewProp(node, BAD_CAST name, BAD_CAST value);
}

static void propi(xmlNodePtr node, const char *name, gint64 value)
{
    g_autofree char *v = g_strdup_printf("%" G_GINT64_FORMAT, value);

    xmlNewProp(node, BAD_CAST name, BAD_CAST v);
}

static void build_metadata(xmlNodePtr dom, const VnDomainSpec *s)
{
    xmlNodePtr meta = child(dom, "metadata", NULL);
    xmlNodePtr inst = xmlNewChild(meta, NULL, BAD_CAST "instance", NULL);
    xmlNsPtr ns = xmlNewNs(inst, BAD_CAST VN_DOMAIN_XML_NS, BAD_CAST VN_DOMAIN_XML_PREFIX);
    xmlNodePtr n;

    xmlSetNs(inst, ns);
    n = xmlNewTextChild(inst, ns, BAD_CAST "uuid", BAD_CAST s->uuid);
    n = xmlNewTextChild(inst, ns, BAD_CAST "name",
                        BAD_CAST(s->meta.instance_name ? s->meta.instance_name : ""));
    if (s->created_at > 0) {
        g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(s->created_at);
        g_autofree char *t = dt ? g_date_time_format(dt, "%Y-%m-%dT%H:%M:%SZ") : NULL;
        if (t)
            xmlNewTextChild(inst, ns, BAD_CAST "created", BAD_CAST t);
    }
    n = xmlNewChild(inst, ns, BAD_CAST "owner", NULL);
    prop(n, "project", s->meta.project_id ? s->meta.project_id : "");
    prop(n, "user", s->meta.user_id ? s->meta.user_id : "");
    n = xmlNewChild(inst, ns, BAD_CAST "flavor", NULL);
    prop(n, "name", s->meta.flavor_name ? s->meta.flavor_name : "");
    propi(n, "vcpus", s->meta.vcpus);
    propi(n, "memory_mb", s->meta.memory_mb);
    propi(n, "root_gb", s->meta.root_gb);
    propi(n, "ephemeral_gb", s->meta.ephemeral_gb);
    propi(n, "swap_mb", s->meta.swap_mb);
    n = xmlNewChild(inst, ns, BAD_CAST "image", NULL);
    prop(n, "id", s->meta.image_id ? s->meta.image_id : "");
    prop(n, "sha256", s->meta.image_sha256 ? s->meta.image_sha256 : "");
    if (s->meta.request_id) {
        n = xmlNewChild(inst, ns, BAD_CAST "request", NULL);
        prop(n, "id", s->meta.request_id);
    }
}

static void build_sysinfo(xmlNodePtr dom, const VnDomainSpec *s)
{
    xmlNodePtr si = child(dom, "sysinfo", NULL);
    xmlNodePtr sys;
    g_autoptr(GList) keys = g_hash_table_get_keys(s->guest_strings);

    prop(si, "type", "smbios");
    sys = child(si, "system", NULL);
    prop(child(sys, "entry", "virtnode"), "name", "manufacturer");
    prop(child(sys, "entry", "virtnode compute"), "name", "product");
    prop(child(sys, "entry", s->uuid), "name", "serial");
    prop(child(sys, "entry", s->uuid), "name", "uuid");
    if (!keys)
        return;
    keys = g_list_sort(keys, (GCompareFunc)strcmp);
    xmlNodePtr oem = child(si, "oemStrings", NULL);
    for (GList *l = keys; l; l = l->next) {
        g_autofree char *e =
            g_strdup_printf("virtnode:%s=%s", (char *)l->data,
                            (char *)g_hash_table_lookup(s->guest_strings, l->data));
        child(oem, "entry", e);
    }
}

static void build_cpu(xmlNodePtr dom, const VnDomainSpec *s)
{
    xmlNodePtr cpu;

    if (!s->cpu_mode)
        return;
    cpu = child(dom, "cpu", NULL);
    prop(cpu, "mode", s->cpu_mode);
    if (strcmp(s->cpu_mode, "custom") == 0) {
        prop(cpu, "match", "exact");
        prop(child(cpu, "model", s->cpu_model), "fallback", "allow");
    }
}

static void build_disk(xmlNodePtr devices, const VnDomainSpec *s, const VnDiskSpec *d)
{
    xmlNodePtr disk = child(devices, "disk", NULL);
    xmlNodePtr n;

    prop(disk, "type", "file");
    prop(disk, "device", "disk");
    n = child(disk, "driver", NULL);
    prop(n, "name", "qemu");
    prop(n, "type", d->format);
    prop(n, "cache", "none");
    prop(n, "discard", "unmap");
    prop(child(disk, "source", NULL), "file", d->path);
    if (d->backing_path) {
        /* the backing chain stated explicitly: the shared base is never relabelled to
         * one guest's identity (other guests read it too) */
        xmlNodePtr bs = child(disk, "backingStore", NULL);
        prop(bs, "type", "file");
        prop(child(bs, "format", NULL), "type", d->backing_format ? d->backing_format : "raw");
        xmlNodePtr src = child(bs, "source", NULL);
        prop(src, "file", d->backing_path);
        if (s->dac_uid > 0) {
            xmlNodePtr sl = child(src, "seclabel", NULL);
            prop(sl, "model", "dac");
            prop(sl, "relabel", "no");
        }
        child(bs, "backingStore", NULL);
    }
    n = child(disk, "target", NULL);
    prop(n, "dev", d->target);
    prop(n, "bus", "virtio");
}

static void bandwidth_dir(xmlNodePtr bw, const char *name, guint64 avg, guint64 peak, guint64 burst)
{
    xmlNodePtr n;

    if (!avg)
        return;
    n = child(bw, name, NULL);
    propi(n, "average", (gint64)avg);
    if (peak)
        propi(n, "peak", (gint64)peak);
    if (burst)
        propi(n, "burst", (gint64)burst);
}

static void build_iface(xmlNodePtr devices, const VnIfaceSpec *i)
{
    xmlNodePtr n = child(devices, "interface", NULL);

    prop(n, "type", "bridge");
    prop(child(n, "mac", NULL), "address", i->mac);
    prop(child(n, "source", NULL), "bridge", i->bridge);
    prop(child(n, "target", NULL), "dev", i->tap);
    prop(child(n, "model", NULL), "type", "virtio");
    if (i->mtu > 0)
        propi(child(n, "mtu", NULL), "size", i->mtu);
    if (i->in_average || i->out_average) {
        xmlNodePtr bw = child(n, "bandwidth", NULL);
        /* libvirt's inbound is what reaches the guest, outbound what it sends */
        bandwidth_dir(bw, "inbound", i->in_average, i->in_peak, i->in_burst);
        bandwidth_dir(bw, "outbound", i->out_average, i->out_peak, i->out_burst);
    }
    if (i->filter) {
        xmlNodePtr f = child(n, "filterref", NULL);
        prop(f, "filter", i->filter);
        for (char **ip = i->filter_ips; ip && *ip; ip++) {
            xmlNodePtr p = child(f, "parameter", NULL);
            prop(p, "name", strchr(*ip, ':') ? "IPV6" : "IP");
            prop(p, "value", *ip);
        }
    }
}

char *vn_domain_xml_iface(const VnIfaceSpec *i)
{
    g_autoptr(xmlDoc) doc = xmlNewDoc(BAD_CAST "1.0");
    xmlNodePtr holder = xmlNewNode(NULL, BAD_CAST "devices");

    xmlDocSetRootElement(doc, holder);
    build_iface(holder, i);
    xmlNodePtr iface = holder->children;
    xmlUnlinkNode(iface);
    xmlDocSetRootElement(doc, iface);
    xmlFreeNode(holder);
    return vn_xml_dump(doc);
}

void vn_vol_disk_spec_free(VnVolDiskSpec *d)
{
    if (!d)
        return;
    g_free(d->serial);
    g_free(d->target);
    g_free(d->bus);
    g_free(d->path);
    g_free(d->protocol);
    g_free(d->name);
    g_free(d->host);
    g_free(d->initiator);
    g_free(d->auth_username);
    g_free(d->secret_usage);
    g_free(d->format);
    g_free(d);
}

/* A volume's disk.  I/O errors stop the guest (error_policy, rerror_policy) rather than
 * reach its file systems: a storage outage pauses the guests on it, which resume when it
 * is back. */
static void build_volume(xmlNodePtr devices, const VnVolDiskSpec *v)
{
    xmlNodePtr disk = child(devices, "disk", NULL);
    xmlNodePtr n, src;

    prop(disk, "type",
         v->kind == VN_VOLDISK_FILE    ? "file"
         : v->kind == VN_VOLDISK_BLOCK ? "block"
                                       : "network");
    prop(disk, "device", "disk");
    n = child(disk, "driver", NULL);
    prop(n, "name", "qemu");
    prop(n, "type", v->format ? v->format : "raw");
    prop(n, "cache", "none");
    if (v->kind == VN_VOLDISK_BLOCK)
        prop(n, "io", "native");
    prop(n, "error_policy", "stop");
    prop(n, "rerror_policy", "stop");
    if (v->discard)
        prop(n, "discard", "unmap");
    src = child(disk, "source", NULL);
    if (v->kind == VN_VOLDISK_FILE) {
        prop(src, "file", v->path);
    } else if (v->kind == VN_VOLDISK_BLOCK) {
        prop(src, "dev", v->path);
    } else {
        prop(src, "protocol", v->protocol);
        prop(src, "name", v->name);
        xmlNodePtr h = child(src, "host", NULL);
        prop(h, "name", v->host);
        if (v->port > 0)
            propi(h, "port", v->port);
        if (strcmp(v->protocol, "nfs") == 0) {
            /* libnfs speaks as root to the export (Cinder's NFS exports squash nobody) */
            xmlNodePtr id = child(src, "identity", NULL);
            prop(id, "user", "root");
            prop(id, "group", "root");
        } else if (v->initiator) {
            prop(child(child(src, "initiator", NULL), "iqn", NULL), "name", v->initiator);
        }
        if (v->auth_username && v->secret_usage) {
            xmlNodePtr a = child(disk, "auth", NULL);
            prop(a, "username", v->auth_username);
            xmlNodePtr sec = child(a, "secret", NULL);
            prop(sec, "type", "iscsi");
            prop(sec, "usage", v->secret_usage);
        }
    }
    n = child(disk, "target", NULL);
    prop(n, "dev", v->target);
    prop(n, "bus", v->bus ? v->bus : "virtio");
    child(disk, "serial", v->serial);
    if (v->read_only)
        child(disk, "readonly", NULL);
}

char *vn_domain_xml_volume(const VnVolDiskSpec *d)
{
    g_autoptr(xmlDoc) doc = xmlNewDoc(BAD_CAST "1.0");
    xmlNodePtr holder = xmlNewNode(NULL, BAD_CAST "devices");

    xmlDocSetRootElement(doc, holder);
    build_volume(holder, d);
    xmlNodePtr disk = holder->children;
    xmlUnlinkNode(disk);
    xmlDocSetRootElement(doc, disk);
    xmlFreeNode(holder);
    return vn_xml_dump(doc);
}

/* A document whose root element is @name; *@root gets it. */
static xmlDocPtr new_doc(const char *name, xmlNodePtr *root)
{
    xmlDocPtr doc = xmlNewDoc(BAD_CAST "1.0");

    *root = xmlNewNode(NULL, BAD_CAST name);
    xmlDocSetRootElement(doc, *root);
    return doc;
}

char *vn_backup_xml(const char *target, const char *path)
{
    xmlNodePtr root, disk;
    g_autoptr(xmlDoc) doc = new_doc("domainbackup", &root);

    prop(root, "mode", "push");
    /* with <disks> given, only the disks it lists take part */
    disk = child(child(root, "disks", NULL), "disk", NULL);
    prop(disk, "name", target);
    prop(disk, "backup", "yes");
    prop(disk, "type", "file");
    prop(child(disk, "target", NULL), "file", path);
    prop(child(disk, "driver", NULL), "type", "qcow2");
    return vn_xml_dump(doc);
}

char *vn_dir_pool_xml(const char *name, const char *path)
{
    xmlNodePtr root;
    g_autoptr(xmlDoc) doc = new_doc("pool", &root);

    prop(root, "type", "dir");
    child(root, "name", name);
    child(child(root, "target", NULL), "path", path);
    return vn_xml_dump(doc);
}

char *vn_raw_volume_xml(const char *name, guint64 capacity)
{
    xmlNodePtr root, target;
    g_autoptr(xmlDoc) doc = new_doc("volume", &root);

    child(root, "name", name);
    prop(childf(root, "capacity", "%" G_GUINT64_FORMAT, capacity), "unit", "bytes");
    target = child(root, "target", NULL);
    prop(child(target, "format", NULL), "type", "raw");
    child(child(target, "permissions", NULL), "mode", "0600");
    return vn_xml_dump(doc);
}

static void build_config_drive(xmlNodePtr devices, const char *path)
{
    xmlNodePtr n = child(devices, "disk", NULL);
    xmlNodePtr t;

    prop(n, "type", "file");
    prop(n, "device", "disk");
    t = child(n, "driver", NULL);
    prop(t, "name", "qemu");
    prop(t, "type", "raw");
    prop(child(n, "source", NULL), "file", path);
    t = child(n, "target", NULL);
    /* a read-only virtio disk, found by its label: a CD-ROM (on virtio-scsi: q35 has no
     * IDE, and not every kernel has AHCI) kept the guest from live-migrating, as QEMU
     * could not inactivate it at the switch-over */
    prop(t, "dev", "vdd");
    prop(t, "bus", "virtio");
    child(n, "readonly", NULL);
}

static void build_devices(xmlNodePtr dom, const VnDomainSpec *s)
{
    xmlNodePtr dev = child(dom, "devices", NULL);
    xmlNodePtr n;

    gboolean scsi = FALSE;

    /* a boot volume first: the guest boots from the first disk */
    for (guint i = 0; i < s->volumes->len; i++) {
        const VnVolDiskSpec *v = g_ptr_array_index(s->volumes, i);
        if (v->target[2] == 'a')
            build_volume(dev, v);
        scsi = scsi || g_strcmp0(v->bus, "scsi") == 0;
    }
    for (guint i = 0; i < s->disks->len; i++)
        build_disk(dev, s, g_ptr_array_index(s->disks, i));
    for (guint i = 0; i < s->volumes->len; i++) {
        const VnVolDiskSpec *v = g_ptr_array_index(s->volumes, i);
        if (v->target[2] != 'a')
            build_volume(dev, v);
    }
    if (scsi) {
        n = child(dev, "controller", NULL);
        prop(n, "type", "scsi");
        prop(n, "model", "virtio-scsi");
    }
    if (s->config_drive)
        build_config_drive(dev, s->config_drive);
    for (guint i = 0; i < s->ifaces->len; i++)
        build_iface(dev, g_ptr_array_index(s->ifaces, i));
    n = child(dev, "serial", NULL);
    prop(n, "type", "file");
    xmlNodePtr src = child(n, "source", NULL);
    prop(src, "path", s->console_log);
    prop(src, "append", "on");
    n = child(dev, "console", NULL);
    prop(n, "type", "file");
    src = child(n, "source", NULL);
    prop(src, "path", s->console_log);
    prop(src, "append", "on");
    prop(child(n, "target", NULL), "type", "serial");
    n = child(dev, "memballoon", NULL);
    prop(n, "model", "virtio");
    prop(child(n, "stats", NULL), "period", "10");
}

static void build_seclabels(xmlNodePtr dom, const VnDomainSpec *s)
{
    xmlNodePtr n;

    if (s->mac_model) {
        n = child(dom, "seclabel", NULL);
        prop(n, "type", "dynamic");
        prop(n, "model", s->mac_model);
        prop(n, "relabel", "yes");
    }
    if (s->dac_uid > 0) {
        n = child(dom, "seclabel", NULL);
        prop(n, "type", "static");
        prop(n, "model", "dac");
        prop(n, "relabel", "yes");
        childf(n, "label", "+%d:+%d", s->dac_uid, s->dac_uid);
    }
}

static gboolean spec_valid(const VnDomainSpec *s, GError **error)
{
    if (!s->uuid || !s->domain_name || !s->domain_type || s->meta.vcpus <= 0 ||
        s->meta.memory_mb <= 0 || !s->console_log || s->disks->len + s->volumes->len == 0) {
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_XML, "incomplete domain description for %s",
                    s->uuid ? s->uuid : "(no uuid)");
        return FALSE;
    }
    if (s->cpu_mode && strcmp(s->cpu_mode, "custom") == 0 && !s->cpu_model) {
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_XML, "cpu mode custom needs a model");
        return FALSE;
    }
    return TRUE;
}

char *vn_domain_xml_build(const VnDomainSpec *s, GError **error)
{
    g_autoptr(xmlDoc) doc = NULL;
    xmlNodePtr dom, n;
    char *out;

    if (!spec_valid(s, error))
        return NULL;
    doc = xmlNewDoc(BAD_CAST "1.0");
    dom = xmlNewDocNode(doc, NULL, BAD_CAST "domain", NULL);
    xmlDocSetRootElement(doc, dom);
    prop(dom, "type", s->domain_type);
    child(dom, "name", s->domain_name);
    child(dom, "uuid", s->uuid);
    child(dom, "title", s->meta.instance_name);
    build_metadata(dom, s);
    n = childf(dom, "memory", "%d", s->meta.memory_mb);
    prop(n, "unit", "MiB");
    n = childf(dom, "currentMemory", "%d", s->meta.memory_mb);
    prop(n, "unit", "MiB");
    childf(dom, "vcpu", "%d", s->meta.vcpus);
    build_sysinfo(dom, s);
    n = child(dom, "os", NULL);
    xmlNodePtr t = child(n, "type", "hvm");
    prop(t, "arch", "x86_64");
    prop(child(n, "boot", NULL), "dev", "hd");
    prop(child(n, "smbios", NULL), "mode", "sysinfo");
    n = child(dom, "features", NULL);
    child(n, "acpi", NULL);
    child(n, "apic", NULL);
    build_cpu(dom, s);
    n = child(dom, "clock", NULL);
    prop(n, "offset", "utc");
    child(dom, "on_poweroff", "destroy");
    child(dom, "on_reboot", "restart");
    child(dom, "on_crash", "destroy");
    build_devices(dom, s);
    build_seclabels(dom, s);

    out = vn_xml_dump(doc);
    if (!out)
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_XML, "cannot serialise the domain XML");
    return out;
}

/* ------------------------------------------------------------------ reading */

static int xpath_int(xmlXPathContextPtr ctx, const char *expr)
{
    g_autofree char *s = vn_xpath_string(ctx, expr);
    gint64 v = s ? g_ascii_strtoll(s, NULL, 10) : 0;

    return v < 0 || v > G_MAXINT32 ? 0 : (int)v;
}

void vn_domain_info_free(VnDomainInfo *i)
{
    if (!i)
        return;
    g_free(i->uuid);
    g_free(i->name);
    g_free(i->instance_uuid);
    vn_domain_meta_clear(&i->meta);
    g_ptr_array_unref(i->disk_paths);
    g_free(i->console_log);
    g_free(i->dac_label);
    g_free(i);
}

VnDomainInfo *vn_domain_xml_parse(const char *xml, gsize len, GError **error)
{
    g_autoptr(xmlDoc) doc = vn_xml_read(xml, len, "domain", error);
    g_autoptr(xmlXPathContext) ctx = NULL;
    g_autoptr(VnDomainInfo) info = NULL;

    if (!doc)
        return NULL;
    ctx = xmlXPathNewContext(doc);
    xmlXPathRegisterNs(ctx, BAD_CAST "vn", BAD_CAST VN_DOMAIN_XML_NS);
    info = g_new0(VnDomainInfo, 1);
    info->disk_paths = g_ptr_array_new_with_free_func(g_free);
    info->uuid = vn_xpath_string(ctx, "/domain/uuid");
    info->name = vn_xpath_string(ctx, "/domain/name");
    info->instance_uuid = vn_xpath_string(ctx, "/domain/metadata/vn:instance/vn:uuid");
    info->ours = info->instance_uuid != NULL;
    info->meta.instance_name = vn_xpath_string(ctx, "/domain/metadata/vn:instance/vn:name");
    info->meta.project_id = vn_xpath_string(ctx, "/domain/metadata/vn:instance/vn:owner/@project");
    info->meta.user_id = vn_xpath_string(ctx, "/domain/metadata/vn:instance/vn:owner/@user");
    info->meta.request_id = vn_xpath_string(ctx, "/domain/metadata/vn:instance/vn:request/@id");
    info->meta.flavor_name = vn_xpath_string(ctx, "/domain/metadata/vn:instance/vn:flavor/@name");
    info->meta.vcpus = xpath_int(ctx, "/domain/metadata/vn:instance/vn:flavor/@vcpus");
    info->meta.memory_mb = xpath_int(ctx, "/domain/metadata/vn:instance/vn:flavor/@memory_mb");
    info->meta.root_gb = xpath_int(ctx, "/domain/metadata/vn:instance/vn:flavor/@root_gb");
    info->meta.ephemeral_gb =
        xpath_int(ctx, "/domain/metadata/vn:instance/vn:flavor/@ephemeral_gb");
    info->meta.swap_mb = xpath_int(ctx, "/domain/metadata/vn:instance/vn:flavor/@swap_mb");
    info->meta.image_id = vn_xpath_string(ctx, "/domain/metadata/vn:instance/vn:image/@id");
    info->meta.image_sha256 = vn_xpath_string(ctx, "/domain/metadata/vn:instance/vn:image/@sha256");
    info->console_log = vn_xpath_string(ctx, "/domain/devices/serial[@type='file']/source/@path");
    info->dac_label =
        vn_xpath_string(ctx, "/domain/seclabel[@model='dac' and @type='static']/label");
    g_auto(GStrv) disks = vn_xpath_strings(ctx, "/domain/devices/disk[@type='file']/source/@file");
    for (char **d = disks; *d; d++)
        g_ptr_array_add(info->disk_paths, g_strdup(*d));
    if (!info->uuid) {
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_XML, "domain XML without a uuid");
        return NULL;
    }
    return g_steal_pointer(&info);
}

static void rebase_attr(xmlNodePtr node, const char *attr, const char *from, const char *to)
{
    xmlChar *v = xmlGetProp(node, BAD_CAST attr);
    gsize flen = strlen(from);

    if (v && strncmp((const char *)v, from, flen) == 0 &&
        (((const char *)v)[flen] == '/' || ((const char *)v)[flen] == '\0')) {
        g_autofree char *nv = g_strconcat(to, (const char *)v + flen, NULL);
        xmlSetProp(node, BAD_CAST attr, BAD_CAST nv);
    }
    xmlFree(v);
}

static void rebase_walk(xmlNodePtr node, const char *from, const char *to)
{
    for (xmlNodePtr n = node; n; n = n->next) {
        if (n->type != XML_ELEMENT_NODE)
            continue;
        if (xmlStrcmp(n->name, BAD_CAST "source") == 0) {
            rebase_attr(n, "file", from, to);
            rebase_attr(n, "path", from, to);
        }
        rebase_walk(n->children, from, to);
    }
}

static void set_dac_label(xmlNodePtr root, int uid)
{
    g_autofree char *label = g_strdup_printf("+%d:+%d", uid, uid);

    for (xmlNodePtr n = root->children; n; n = n->next) {
        if (n->type != XML_ELEMENT_NODE || xmlStrcmp(n->name, BAD_CAST "seclabel") != 0)
            continue;
        xmlChar *model = xmlGetProp(n, BAD_CAST "model");
        gboolean dac = model && xmlStrcmp(model, BAD_CAST "dac") == 0;
        xmlFree(model);
        if (!dac)
            continue;
        for (xmlNodePtr c = n->children; c; c = c->next) {
            if (c->type == XML_ELEMENT_NODE && xmlStrcmp(c->name, BAD_CAST "label") == 0)
                xmlNodeSetContent(c, BAD_CAST label);
        }
    }
}

char *vn_domain_xml_for_destination(const char *xml, const char *from_dir, const char *to_dir,
                                    int dac_uid, GError **error)
{
    g_autoptr(xmlDoc) doc = vn_xml_read(xml, strlen(xml), "domain", error);

    if (!doc)
        return NULL;
    if (from_dir && to_dir && strcmp(from_dir, to_dir) != 0)
        rebase_walk(xmlDocGetRootElement(doc), from_dir, to_dir);
    if (dac_uid > 0)
        set_dac_label(xmlDocGetRootElement(doc), dac_uid);
    return vn_xml_dump(doc);
}

char *vn_domain_xml_cpu(const char *xml, gsize len, GError **error)
{
    g_autoptr(xmlDoc) doc = vn_xml_read(xml, len, "domain", error);
    g_autoptr(xmlDoc) out = NULL;
    xmlNodePtr cpu = NULL;

    if (!doc)
        return NULL;
    for (xmlNodePtr n = xmlDocGetRootElement(doc)->children; n; n = n->next) {
        if (n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, BAD_CAST "cpu") == 0) {
            cpu = n;
            break;
        }
    }
    if (!cpu)
        return g_strdup("");
    out = xmlNewDoc(BAD_CAST "1.0");
    xmlDocSetRootElement(out, xmlDocCopyNode(cpu, out, 1));
    return vn_xml_dump(out);
}

char *vn_domain_xml_disk_by_serial(const char *xml, gsize len, const char *serial)
{
    g_autoptr(xmlDoc) doc = vn_xml_read(xml, len, "domain", NULL);

    if (!doc)
        return NULL;
    for (xmlNodePtr dev = xmlDocGetRootElement(doc)->children; dev; dev = dev->next) {
        if (dev->type != XML_ELEMENT_NODE || xmlStrcmp(dev->name, BAD_CAST "devices") != 0)
            continue;
        for (xmlNodePtr d = dev->children; d; d = d->next) {
            g_autofree char *target = NULL;
            gboolean match = FALSE;
            if (d->type != XML_ELEMENT_NODE || xmlStrcmp(d->name, BAD_CAST "disk") != 0)
                continue;
            for (xmlNodePtr c = d->children; c; c = c->next) {
                if (c->type != XML_ELEMENT_NODE)
                    continue;
                if (xmlStrcmp(c->name, BAD_CAST "serial") == 0) {
                    xmlChar *t = xmlNodeGetContent(c);
                    match = t && strcmp((const char *)t, serial) == 0;
                    xmlFree(t);
                } else if (xmlStrcmp(c->name, BAD_CAST "target") == 0) {
                    xmlChar *t = xmlGetProp(c, BAD_CAST "dev");
                    g_free(target);
                    target = t ? g_strdup((const char *)t) : NULL;
                    xmlFree(t);
                }
            }
            if (match && target)
                return g_steal_pointer(&target);
        }
    }
    return NULL;
}

gboolean vn_cpu_xml_check(const char *xml, gsize len, GError **error)
{
    g_autoptr(xmlDoc) doc = vn_xml_read(xml, len, "cpu", error);

    return doc != NULL;
}
