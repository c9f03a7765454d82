/* agent/ops/ports.c - network ports across the flows (see ports.h). */
#include <string.h>

#include "agent/base/log.h"
#include "agent/ops/ports.h"
#include "agent/virt/domain.h"
#include "agent/virt/nwfilter.h"
#include "api/error.h"
#include "api/json.h"
#include "network/bridge.h"
#include "storage/config_drive.h"

static VnNetSegment segment(const VnPortSpec *p)
{
    VnNetSegment s = { p->network_id, p->physical_network,
                       p->type == VN_NET_TYPE_VLAN ? p->segmentation_id : 0, p->mtu };
    return s;
}

gboolean vn_ports_check(VnAgent *a, const GPtrArray *ports, GError **error)
{
    for (guint i = 0; ports && i < ports->len; i++) {
        const VnPortSpec *p = g_ptr_array_index(ports, i);
        VnNetSegment s = segment(p);
        g_autoptr(GError) err = NULL;
        if (!vn_net_check(a->net, &s, &err)) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "networks[%u] (port %s): %s", i,
                        p->port_id, err->message);
            return FALSE;
        }
    }
    return TRUE;
}

static gboolean plug_one(VnAgent *a, const VnPortSpec *p, GError **error)
{
    VnNetSegment s = segment(p);
    g_autofree char *bridge = vn_net_acquire(a->net, &s, p->port_id, error);

    if (!bridge)
        return FALSE;
    if (p->port_security && !vn_nwfilter_define(a->virt, p->port_id, p->rules, error)) {
        vn_net_release(a->net, p->network_id, p->port_id);
        return FALSE;
    }
    return TRUE;
}

gboolean vn_ports_plug(VnAgent *a, const GPtrArray *ports, guint *plugged, GError **error)
{
    *plugged = 0;
    for (guint i = 0; ports && i < ports->len; i++) {
        const VnPortSpec *p = g_ptr_array_index(ports, i);
        if (!plug_one(a, p, error)) {
            g_prefix_error(error, "plugging port %s: ", p->port_id);
            return FALSE;
        }
        (*plugged)++;
    }
    return TRUE;
}

void vn_ports_unplug(VnAgent *a, const GPtrArray *ports, guint count)
{
    for (guint i = MIN(count, ports ? ports->len : 0); i-- > 0;) {
        const VnPortSpec *p = g_ptr_array_index(ports, i);
        g_autoptr(GError) err = NULL;
        if (p->port_security && !vn_nwfilter_undefine(a->virt, p->port_id, &err))
            vn_warn_error(&err, "unplugging port %s", p->port_id);
        vn_net_release(a->net, p->network_id, p->port_id);
    }
}

void vn_ports_iface(const VnPortSpec *p, VnIfaceSpec *out)
{
    GPtrArray *ips = g_ptr_array_new();

    memset(out, 0, sizeof(*out));
    out->mac = g_strdup(p->mac);
    out->bridge = vn_net_bridge_name(p->network_id);
    out->tap = vn_net_tap_name(p->port_id);
    out->mtu = p->mtu;
    if (p->port_security) {
        out->filter = vn_nwfilter_name(p->port_id);
        for (guint i = 0; i < p->fixed_ips->len; i++)
            g_ptr_array_add(ips,
                            g_strdup(((VnFixedIp *)g_ptr_array_index(p->fixed_ips, i))->address));
    }
    g_ptr_array_add(ips, NULL);
    out->filter_ips = (char **)g_ptr_array_free(ips, FALSE);
    out->in_average = p->inbound.average;
    out->in_peak = p->inbound.peak;
    out->in_burst = p->inbound.burst;
    out->out_average = p->outbound.average;
    out->out_peak = p->outbound.peak;
    out->out_burst = p->outbound.burst;
}

void vn_ports_iface_clear(VnIfaceSpec *i)
{
    g_free(i->mac);
    g_free(i->bridge);
    g_free(i->tap);
    g_free(i->filter);
    g_strfreev(i->filter_ips);
    memset(i, 0, sizeof(*i));
}

/* ------------------------------------------------------------------ config drive */

static char *prefix_netmask(int family, int prefix)
{
    if (family == 6)
        return g_strdup_printf("%d", prefix);
    guint32 m = prefix ? 0xffffffffu << (32 - prefix) : 0;
    return g_strdup_printf("%u.%u.%u.%u", m >> 24, (m >> 16) & 0xff, (m >> 8) & 0xff, m & 0xff);
}

/* OpenStack's network_data.json: links (one per port, by MAC), networks (one per fixed
 * IP, static), services (DNS). */
static json_object *network_data(const VnInstanceRecord *rec)
{
    json_object *o = json_object_new_object();
    json_object *links = json_object_new_array();
    json_object *nets = json_object_new_array();
    json_object *services = json_object_new_array();
    g_autoptr(GHashTable) dns_seen = g_hash_table_new(g_str_hash, g_str_equal);

    for (guint i = 0; i < rec->ports->len; i++) {
        const VnPortSpec *p = g_ptr_array_index(rec->ports, i);
        g_autofree char *tap = vn_net_tap_name(p->port_id);
        json_object *l = json_object_new_object();
        json_object_object_add(l, "id", json_object_new_string(tap));
        json_object_object_add(l, "vif_id", json_object_new_string(p->port_id));
        json_object_object_add(l, "type", json_object_new_string("bridge"));
        json_object_object_add(l, "ethernet_mac_address", json_object_new_string(p->mac));
        json_object_object_add(l, "mtu", json_object_new_int(p->mtu ? p->mtu : 1500));
        json_object_array_add(links, l);
        for (guint j = 0; j < p->fixed_ips->len; j++) {
            const VnFixedIp *f = g_ptr_array_index(p->fixed_ips, j);
            g_autofree char *id = g_strdup_printf("network%zu", json_object_array_length(nets));
            g_autofree char *mask = prefix_netmask(f->family, f->prefix);
            json_object *n = json_object_new_object();
            json_object *routes = json_object_new_array();
            json_object_object_add(n, "id", json_object_new_string(id));
            json_object_object_add(n, "link", json_object_new_string(tap));
            json_object_object_add(n, "type",
                                   json_object_new_string(f->family == 6 ? "ipv6" : "ipv4"));
            json_object_object_add(n, "ip_address", json_object_new_string(f->address));
            json_object_object_add(n, "netmask", json_object_new_string(mask));
            json_object_object_add(n, "network_id", json_object_new_string(p->network_id));
            if (f->gateway) {
                json_object *r = json_object_new_object();
                json_object_object_add(r, "network",
                                       json_object_new_string(f->family == 6 ? "::" : "0.0.0.0"));
                json_object_object_add(r, "netmask",
                                       json_object_new_string(f->family == 6 ? "0" : "0.0.0.0"));
                json_object_object_add(r, "gateway", json_object_new_string(f->gateway));
                json_object_array_add(routes, r);
            }
            json_object_object_add(n, "routes", routes);
            json_object_array_add(nets, n);
            for (char **d = f->dns; d && *d; d++) {
                if (g_hash_table_contains(dns_seen, *d))
                    continue;
                g_hash_table_add(dns_seen, *d);
                json_object *sv = json_object_new_object();
                json_object_object_add(sv, "type", json_object_new_string("dns"));
                json_object_object_add(sv, "address", json_object_new_string(*d));
                json_object_array_add(services, sv);
            }
        }
    }
    json_object_object_add(o, "links", links);
    json_object_object_add(o, "networks", nets);
    json_object_object_add(o, "services", services);
    return o;
}

static json_object *meta_data(VnAgent *a, const VnInstanceRecord *rec)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    json_object *o = json_object_new_object();
    g_autofree char *hostname = g_ascii_strdown(rec->name, -1);

    for (char *c = hostname; *c; c++) {
        if (!g_ascii_isalnum(*c) && *c != '-')
            *c = '-';
    }
    json_object_object_add(o, "uuid", json_object_new_string(rec->uuid));
    json_object_object_add(o, "name", json_object_new_string(rec->name));
    json_object_object_add(o, "hostname", json_object_new_string(hostname));
    json_object_object_add(o, "launch_index", json_object_new_int(0));
    json_object_object_add(o, "availability_zone", json_object_new_string("nova"));
    json_object_object_add(o, "project_id",
                           rec->project_id ? json_object_new_string(rec->project_id) : NULL);
    json_object_object_add(o, "meta", vn_string_map_to_json(rec->metadata));
    json_object_object_add(o, "compute_host", json_object_new_string(cfg->host));
    return o;
}

static GBytes *json_bytes(json_object *o)
{
    const char *t = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    GBytes *b = g_bytes_new(t, strlen(t));

    json_object_put(o);
    return b;
}

gboolean vn_ports_config_drive(VnAgent *a, const VnInstanceRecord *rec, const char *path,
                               GCancellable *cancel, GError **error)
{
    g_autoptr(GHashTable) files =
        g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)g_bytes_unref);

    g_hash_table_insert(files, "openstack/latest/meta_data.json", json_bytes(meta_data(a, rec)));
    g_hash_table_insert(files, "openstack/latest/network_data.json", json_bytes(network_data(rec)));
    if (rec->user_data) {
        gsize n = 0;
        guchar *raw = g_base64_decode(rec->user_data, &n);
        g_hash_table_insert(files, "openstack/latest/user_data", g_bytes_new_take(raw, n));
    }
    return vn_config_drive_make(path, files, cancel, error);
}

/* ------------------------------------------------------------------ start-up */

void vn_ports_reconcile(VnAgent *a)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(GPtrArray) recs = vn_instance_store_list(a->store, FALSE);
    g_autoptr(GHashTable) live = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GError) err = NULL;
    g_auto(GStrv) filters = NULL;
    guint removed;

    for (guint i = 0; i < recs->len; i++) {
        VnInstanceRecord *r = g_ptr_array_index(recs, i);
        gboolean exists = FALSE;
        /* ports belong to guests that exist here: a rolled-back build holds none */
        if (r->vm_state == VN_VM_DELETED || r->vm_state == VN_VM_BUILDING ||
            g_strcmp0(r->host, cfg->host) != 0 || !r->ports->len ||
            !vn_domain_exists(a->virt, r->uuid, &exists, NULL) || !exists)
            continue;
        for (guint j = 0; j < r->ports->len; j++) {
            const VnPortSpec *p = g_ptr_array_index(r->ports, j);
            g_hash_table_add(live, g_strdup(p->port_id));
            if (!plug_one(a, p, &err))
                vn_warn_error(&err, "instance %s: adopting port %s", r->uuid, p->port_id);
        }
    }
    removed = vn_net_host_reconcile(a->net);
    if (removed)
        g_message("networks: removed %u bridges no port uses", removed);
    filters = vn_nwfilter_list(a->virt, &err);
    for (char **f = filters; f && *f; f++) {
        if (g_hash_table_contains(live, *f))
            continue;
        if (vn_nwfilter_undefine(a->virt, *f, &err))
            g_message("networks: removed the security filter of port %s, which no instance has",
                      *f);
        else
            vn_warn_error(&err, "removing the filter of port %s", *f);
    }
    if (!filters)
        vn_warn_error(&err, "listing security filters");
}
