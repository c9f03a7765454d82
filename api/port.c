/* api/port.c - the network port contract (see port.h). */
#include <stdarg.h>
#include <string.h>

#include <gio/gio.h>

#include "api/error.h"
#include "api/json.h"
#include "api/port.h"

#define MAX_PORTS     16
#define MAX_FIXED_IPS 8
#define MAX_DNS       4
#define MAX_RULES     256
#define MTU_MIN       576
#define MTU_MAX       9216

const char *vn_net_type_name(VnNetType t)
{
    return t == VN_NET_TYPE_VLAN ? "vlan" : "flat";
}

/* ------------------------------------------------------------------ life cycle */

static void fixed_ip_free(VnFixedIp *f)
{
    if (!f)
        return;
    g_free(f->address);
    g_free(f->cidr);
    g_free(f->gateway);
    g_strfreev(f->dns);
    g_free(f);
}

static void rule_free(VnSgRule *r)
{
    if (!r)
        return;
    g_free(r->protocol);
    g_free(r->remote_ip_prefix);
    g_free(r);
}

VnPortSpec *vn_port_spec_new(void)
{
    VnPortSpec *p = g_new0(VnPortSpec, 1);

    p->fixed_ips = g_ptr_array_new_with_free_func((GDestroyNotify)fixed_ip_free);
    p->rules = g_ptr_array_new_with_free_func((GDestroyNotify)rule_free);
    p->port_security = TRUE;
    return p;
}

void vn_port_spec_free(VnPortSpec *p)
{
    if (!p)
        return;
    g_free(p->port_id);
    g_free(p->network_id);
    g_free(p->mac);
    g_ptr_array_unref(p->fixed_ips);
    g_free(p->physical_network);
    g_ptr_array_unref(p->rules);
    g_free(p);
}

VnPortSpec *vn_port_spec_copy(const VnPortSpec *p)
{
    g_autoptr(json_object) o = vn_port_spec_to_json(p);

    /* the JSON form is complete and validated: a copy is a round trip */
    return vn_port_spec_parse(o, "port", NULL);
}

/* ------------------------------------------------------------------ pieces */

char *vn_mac_normalize(const char *text, GError **error)
{
    char hex[13];
    int n = 0;
    unsigned first;

    for (const char *p = text ? text : ""; *p; p++) {
        if (g_ascii_isxdigit(*p)) {
            if (n >= 12) {
                n = -1;
                break;
            }
            hex[n++] = g_ascii_tolower(*p);
        } else if (*p != ':' && *p != '-') {
            n = -1;
            break;
        }
    }
    if (n != 12) {
        vn_api_invalid(error, "'%s' is not a MAC address", text ? text : "");
        return NULL;
    }
    hex[12] = '\0';
    first = (unsigned)g_ascii_xdigit_value(hex[0]) * 16 + (unsigned)g_ascii_xdigit_value(hex[1]);
    if (first & 1) {
        vn_api_invalid(error, "'%s' is a multicast address, not a port's", text);
        return NULL;
    }
    if (strcmp(hex, "000000000000") == 0) {
        vn_api_invalid(error, "'%s' is not a usable address", text);
        return NULL;
    }
    return g_strdup_printf("%.2s:%.2s:%.2s:%.2s:%.2s:%.2s", hex, hex + 2, hex + 4, hex + 6, hex + 8,
                           hex + 10);
}

static gboolean id_ok(const char *s)
{
    for (const char *p = s; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-')
            return FALSE;
    }
    return *s != '\0';
}

/* An address of the family the caller may require (0: any); canonical text in *out. */
static GInetAddress *parse_address(const char *text, int family, const char *path, GError **error)
{
    GInetAddress *a = g_inet_address_new_from_string(text);
    int f;

    if (!a) {
        vn_api_invalid(error, "%s: '%s' is not an IP address", path, text);
        return NULL;
    }
    f = g_inet_address_get_family(a) == G_SOCKET_FAMILY_IPV4 ? 4 : 6;
    if (family && f != family) {
        vn_api_invalid(error, "%s: '%s' is not an IPv%d address", path, text, family);
        g_object_unref(a);
        return NULL;
    }
    return a;
}

/* "network/prefix" with no host bits set; canonical text, family and prefix out. */
static GInetAddressMask *parse_cidr(const char *text, const char *path, GError **error)
{
    g_autoptr(GError) e = NULL;
    GInetAddressMask *m = g_inet_address_mask_new_from_string(text, &e);

    if (!m || !strchr(text, '/')) {
        vn_api_invalid(error, "%s: '%s' is not a network in CIDR form (address/prefix)", path,
                       text);
        g_clear_object(&m);
        return NULL;
    }
    return m;
}

static char *mask_text(GInetAddressMask *m)
{
    g_autofree char *net = g_inet_address_to_string(g_inet_address_mask_get_address(m));

    return g_strdup_printf("%s/%u", net, g_inet_address_mask_get_length(m));
}

static gboolean parse_fixed_ip(json_object *obj, const char *path, VnFixedIp *out, GError **error)
{
    static const char *const keys[] = { "ip_address", "subnet", "subnet_id", NULL };
    static const char *const skeys[] = { "cidr", "gateway", "dns", "id", "ip_version", NULL };
    g_autofree char *ip = NULL;
    g_autofree char *cidr = NULL;
    g_autofree char *gw = NULL;
    g_autofree char *spath = g_strdup_printf("%s.subnet", path);
    g_autofree char *ippath = g_strdup_printf("%s.ip_address", path);
    g_autoptr(GInetAddress) addr = NULL;
    g_autoptr(GInetAddressMask) net = NULL;
    json_object *subnet, *dns;
    GPtrArray *servers;

    if (!vn_json_expect_object(obj, path, keys, error) ||
        !vn_json_get_string(obj, path, "ip_address", TRUE, 2, 64, &ip, error))
        return FALSE;
    subnet = vn_json_member(obj, "subnet");
    if (!subnet)
        return vn_api_invalid(error, "%s: missing", spath);
    if (!vn_json_expect_object(subnet, spath, skeys, error) ||
        !vn_json_get_string(subnet, spath, "cidr", TRUE, 3, 64, &cidr, error) ||
        !vn_json_get_string(subnet, spath, "gateway", FALSE, 2, 64, &gw, error))
        return FALSE;
    if (!(addr = parse_address(ip, 0, ippath, error)))
        return FALSE;
    g_autofree char *cpath = g_strdup_printf("%s.cidr", spath);
    if (!(net = parse_cidr(cidr, cpath, error)))
        return FALSE;
    if (g_inet_address_get_family(addr) !=
        g_inet_address_get_family(g_inet_address_mask_get_address(net)))
        return vn_api_invalid(error, "%s: '%s' and the subnet '%s' are of different families",
                              ippath, ip, cidr);
    if (!g_inet_address_mask_matches(net, addr))
        return vn_api_invalid(error, "%s: '%s' is not inside its subnet '%s'", ippath, ip, cidr);
    if (g_inet_address_equal(addr, g_inet_address_mask_get_address(net)))
        return vn_api_invalid(error, "%s: '%s' is the subnet's network address", ippath, ip);
    out->family = g_inet_address_get_family(addr) == G_SOCKET_FAMILY_IPV4 ? 4 : 6;
    out->address = g_inet_address_to_string(addr);
    out->cidr = mask_text(net);
    out->prefix = (int)g_inet_address_mask_get_length(net);
    if (gw) {
        g_autofree char *gpath = g_strdup_printf("%s.gateway", spath);
        g_autoptr(GInetAddress) g = parse_address(gw, out->family, gpath, error);
        if (!g)
            return FALSE;
        if (!g_inet_address_mask_matches(net, g))
            return vn_api_invalid(error, "%s: '%s' is not inside the subnet '%s'", gpath, gw, cidr);
        if (g_inet_address_equal(g, addr))
            return vn_api_invalid(error, "%s: '%s' is the port's own address", gpath, gw);
        out->gateway = g_inet_address_to_string(g);
    }
    servers = g_ptr_array_new();
    dns = vn_json_member(subnet, "dns");
    if (dns &&
        (!json_object_is_type(dns, json_type_array) || json_object_array_length(dns) > MAX_DNS)) {
        g_ptr_array_free(servers, TRUE);
        return vn_api_invalid(error, "%s.dns: a list of at most %d addresses expected", spath,
                              MAX_DNS);
    }
    for (size_t i = 0; dns && i < json_object_array_length(dns); i++) {
        json_object *d = json_object_array_get_idx(dns, i);
        g_autofree char *dpath = g_strdup_printf("%s.dns[%zu]", spath, i);
        g_autoptr(GInetAddress) da = NULL;
        if (!json_object_is_type(d, json_type_string)) {
            g_ptr_array_free(servers, TRUE);
            return vn_api_invalid(error, "%s: a string expected", dpath);
        }
        if (!(da = parse_address(json_object_get_string(d), 0, dpath, error))) {
            g_ptr_array_free(servers, TRUE);
            return FALSE;
        }
        g_ptr_array_add(servers, g_inet_address_to_string(da));
    }
    g_ptr_array_add(servers, NULL);
    out->dns = (char **)g_ptr_array_free(servers, FALSE);
    return TRUE;
}

static gboolean parse_bandwidth(json_object *obj, const char *path, VnBandwidth *in,
                                VnBandwidth *out_bw, GError **error)
{
    static const char *const keys[] = { "inbound", "outbound", NULL };
    static const char *const dkeys[] = { "average", "peak", "burst", NULL };

    if (!vn_json_expect_object(obj, path, keys, error))
        return FALSE;
    for (int d = 0; d < 2; d++) {
        const char *name = d ? "outbound" : "inbound";
        VnBandwidth *bw = d ? out_bw : in;
        json_object *o = vn_json_member(obj, name);
        g_autofree char *dpath = g_strdup_printf("%s.%s", path, name);
        gint64 avg, peak, burst;
        if (!o)
            continue;
        /* libvirt's units: KiB/s for rates, KiB for the burst; up to 100 Gbit/s */
        if (!vn_json_expect_object(o, dpath, dkeys, error) ||
            !vn_json_get_int(o, dpath, "average", TRUE, 1, 12500000, 0, &avg, error) ||
            !vn_json_get_int(o, dpath, "peak", FALSE, 1, 12500000, 0, &peak, error) ||
            !vn_json_get_int(o, dpath, "burst", FALSE, 1, 1048576, 0, &burst, error))
            return FALSE;
        if (peak && peak < avg)
            return vn_api_invalid(
                error, "%s.peak: %" G_GINT64_FORMAT " is below the average %" G_GINT64_FORMAT,
                dpath, peak, avg);
        bw->average = (guint64)avg;
        bw->peak = (guint64)peak;
        bw->burst = (guint64)burst;
    }
    return TRUE;
}

static gboolean parse_rule(json_object *obj, const char *path, VnSgRule *r, GError **error)
{
    static const char *const keys[] = { "direction",
                                        "ethertype",
                                        "protocol",
                                        "port_range_min",
                                        "port_range_max",
                                        "remote_ip_prefix",
                                        "remote_group_id",
                                        "id",
                                        NULL };
    g_autofree char *dir = NULL;
    g_autofree char *eth = NULL;
    g_autofree char *proto = NULL;
    g_autofree char *prefix = NULL;
    g_autofree char *group = NULL;
    gint64 lo, hi;

    if (!vn_json_expect_object(obj, path, keys, error) ||
        !vn_json_get_string(obj, path, "direction", TRUE, 1, 16, &dir, error) ||
        !vn_json_get_string(obj, path, "ethertype", FALSE, 1, 16, &eth, error) ||
        !vn_json_get_string(obj, path, "protocol", FALSE, 1, 16, &proto, error) ||
        !vn_json_get_int(obj, path, "port_range_min", FALSE, 0, 65535, 0, &lo, error) ||
        !vn_json_get_int(obj, path, "port_range_max", FALSE, 0, 65535, 0, &hi, error) ||
        !vn_json_get_string(obj, path, "remote_ip_prefix", FALSE, 3, 64, &prefix, error) ||
        !vn_json_get_string(obj, path, "remote_group_id", FALSE, 1, 64, &group, error))
        return FALSE;
    if (strcmp(dir, "ingress") != 0 && strcmp(dir, "egress") != 0)
        return vn_api_invalid(error, "%s.direction: '%s' is not ingress or egress", path, dir);
    r->ingress = strcmp(dir, "ingress") == 0;
    if (!eth || strcmp(eth, "IPv4") == 0)
        r->family = 4;
    else if (strcmp(eth, "IPv6") == 0)
        r->family = 6;
    else
        return vn_api_invalid(error, "%s.ethertype: '%s' is not IPv4 or IPv6", path, eth);
    if (group)
        return vn_api_invalid(error,
                              "%s.remote_group_id: rules by group are not supported; send "
                              "remote_ip_prefix",
                              path);
    if (proto) {
        for (char *p = proto; *p; p++)
            *p = g_ascii_tolower(*p);
        if (strcmp(proto, "tcp") != 0 && strcmp(proto, "udp") != 0 && strcmp(proto, "icmp") != 0 &&
            strcmp(proto, "any") != 0)
            return vn_api_invalid(error, "%s.protocol: '%s' is not tcp, udp or icmp", path, proto);
        if (strcmp(proto, "any") != 0)
            r->protocol = g_strdup(proto);
    }
    if ((lo || hi) && (!r->protocol || strcmp(r->protocol, "icmp") == 0))
        return vn_api_invalid(error, "%s.port_range_min: ports need protocol tcp or udp", path);
    if (hi && !lo)
        lo = hi;
    if (lo && !hi)
        hi = lo;
    if (lo > hi)
        return vn_api_invalid(error,
                              "%s.port_range_min: %" G_GINT64_FORMAT
                              " is above port_range_max %" G_GINT64_FORMAT,
                              path, lo, hi);
    r->port_min = (int)lo;
    r->port_max = (int)hi;
    if (prefix) {
        g_autofree char *ppath = g_strdup_printf("%s.remote_ip_prefix", path);
        g_autoptr(GInetAddressMask) m = parse_cidr(prefix, ppath, error);
        if (!m)
            return FALSE;
        if ((g_inet_address_get_family(g_inet_address_mask_get_address(m)) == G_SOCKET_FAMILY_IPV4
                 ? 4
                 : 6) != r->family)
            return vn_api_invalid(error, "%s: '%s' is not an %s network", ppath, prefix,
                                  r->family == 4 ? "IPv4" : "IPv6");
        r->remote_ip_prefix = mask_text(m);
    }
    return TRUE;
}

GPtrArray *vn_sg_rules_parse(json_object *groups, const char *path, GError **error)
{
    g_autoptr(GPtrArray) rules = g_ptr_array_new_with_free_func((GDestroyNotify)rule_free);

    if (!groups)
        return g_steal_pointer(&rules);
    if (!json_object_is_type(groups, json_type_array)) {
        vn_api_invalid(error, "%s: a list expected", path);
        return NULL;
    }
    for (size_t g = 0; g < json_object_array_length(groups); g++) {
        static const char *const gkeys[] = { "id", "name", "rules", NULL };
        json_object *grp = json_object_array_get_idx(groups, g);
        g_autofree char *gpath = g_strdup_printf("%s[%zu]", path, g);
        json_object *list;
        if (!vn_json_expect_object(grp, gpath, gkeys, error))
            return NULL;
        list = vn_json_member(grp, "rules");
        if (list && !json_object_is_type(list, json_type_array)) {
            vn_api_invalid(error, "%s.rules: a list expected", gpath);
            return NULL;
        }
        for (size_t i = 0; list && i < json_object_array_length(list); i++) {
            g_autofree char *rpath = g_strdup_printf("%s.rules[%zu]", gpath, i);
            VnSgRule *r = g_new0(VnSgRule, 1);
            g_ptr_array_add(rules, r);
            if (rules->len > MAX_RULES) {
                vn_api_invalid(error, "%s: more than %d rules", path, MAX_RULES);
                return NULL;
            }
            if (!parse_rule(json_object_array_get_idx(list, i), rpath, r, error))
                return NULL;
        }
    }
    return g_steal_pointer(&rules);
}

/* ------------------------------------------------------------------ the port */

VnPortSpec *vn_port_spec_parse(json_object *obj, const char *path, GError **error)
{
    static const char *const keys[] = { "port_id",
                                        "network_id",
                                        "mac",
                                        "fixed_ips",
                                        "mtu",
                                        "network_type",
                                        "physical_network",
                                        "segmentation_id",
                                        "port_security",
                                        "security_groups",
                                        "bandwidth",
                                        NULL };
    g_autoptr(VnPortSpec) p = vn_port_spec_new();
    g_autofree char *mac = NULL;
    g_autofree char *type = NULL;
    g_autofree char *fpath = g_strdup_printf("%s.fixed_ips", path);
    g_autofree char *sgpath = g_strdup_printf("%s.security_groups", path);
    g_autoptr(GError) merr = NULL;
    gint64 mtu, seg;
    json_object *ips, *bw;
    GPtrArray *rules;

    if (!vn_json_expect_object(obj, path, keys, error) ||
        !vn_json_get_string(obj, path, "port_id", TRUE, 1, 64, &p->port_id, error) ||
        !vn_json_get_string(obj, path, "network_id", TRUE, 1, 64, &p->network_id, error) ||
        !vn_json_get_string(obj, path, "mac", TRUE, 12, 17, &mac, error) ||
        !vn_json_get_int(obj, path, "mtu", FALSE, MTU_MIN, MTU_MAX, 0, &mtu, error) ||
        !vn_json_get_string(obj, path, "network_type", FALSE, 1, 16, &type, error) ||
        !vn_json_get_string(obj, path, "physical_network", TRUE, 1, 64, &p->physical_network,
                            error) ||
        !vn_json_get_int(obj, path, "segmentation_id", FALSE, 1, 4094, 0, &seg, error) ||
        !vn_json_get_bool(obj, path, "port_security", TRUE, &p->port_security, error))
        return NULL;
    if (!id_ok(p->port_id))
        return vn_api_invalid(error, "%s.port_id: '%s' may hold letters, digits and '-' only", path,
                              p->port_id),
               NULL;
    if (!id_ok(p->network_id))
        return vn_api_invalid(error, "%s.network_id: '%s' may hold letters, digits and '-' only",
                              path, p->network_id),
               NULL;
    for (const char *c = p->physical_network; *c; c++) {
        if (!g_ascii_isalnum(*c) && *c != '-' && *c != '_' && *c != '.')
            return vn_api_invalid(error, "%s.physical_network: '%s' is not a physical network name",
                                  path, p->physical_network),
                   NULL;
    }
    if (!(p->mac = vn_mac_normalize(mac, &merr)))
        return vn_api_invalid(error, "%s.mac: %s", path, merr->message), NULL;
    p->mtu = (int)mtu;
    if (!type || strcmp(type, "flat") == 0)
        p->type = VN_NET_TYPE_FLAT;
    else if (strcmp(type, "vlan") == 0)
        p->type = VN_NET_TYPE_VLAN;
    else
        return vn_api_invalid(error, "%s.network_type: '%s' is not flat or vlan", path, type), NULL;
    if (p->type == VN_NET_TYPE_VLAN && !seg)
        return vn_api_invalid(error, "%s.segmentation_id: a vlan network needs a VLAN id (1-4094)",
                              path),
               NULL;
    if (p->type == VN_NET_TYPE_FLAT && seg)
        return vn_api_invalid(error, "%s.segmentation_id: a flat network has no VLAN id", path),
               NULL;
    p->segmentation_id = (int)seg;
    ips = vn_json_member(obj, "fixed_ips");
    if (ips && (!json_object_is_type(ips, json_type_array) ||
                json_object_array_length(ips) > MAX_FIXED_IPS))
        return vn_api_invalid(error, "%s: a list of at most %d addresses expected", fpath,
                              MAX_FIXED_IPS),
               NULL;
    for (size_t i = 0; ips && i < json_object_array_length(ips); i++) {
        g_autofree char *ipath = g_strdup_printf("%s[%zu]", fpath, i);
        VnFixedIp *f = g_new0(VnFixedIp, 1);
        g_ptr_array_add(p->fixed_ips, f);
        if (!parse_fixed_ip(json_object_array_get_idx(ips, i), ipath, f, error))
            return NULL;
        for (guint j = 0; j + 1 < p->fixed_ips->len; j++) {
            if (strcmp(((VnFixedIp *)g_ptr_array_index(p->fixed_ips, j))->address, f->address) == 0)
                return vn_api_invalid(error, "%s.ip_address: '%s' is given twice", ipath,
                                      f->address),
                       NULL;
        }
    }
    if (!(rules = vn_sg_rules_parse(vn_json_member(obj, "security_groups"), sgpath, error)))
        return NULL;
    g_ptr_array_unref(p->rules);
    p->rules = rules;
    if (!p->port_security && p->rules->len)
        return vn_api_invalid(error, "%s: security groups need port_security", sgpath), NULL;
    bw = vn_json_member(obj, "bandwidth");
    if (bw) {
        g_autofree char *bpath = g_strdup_printf("%s.bandwidth", path);
        if (!parse_bandwidth(bw, bpath, &p->inbound, &p->outbound, error))
            return NULL;
    }
    return g_steal_pointer(&p);
}

GPtrArray *vn_port_specs_parse(json_object *list, const char *path, GError **error)
{
    g_autoptr(GPtrArray) ports = g_ptr_array_new_with_free_func((GDestroyNotify)vn_port_spec_free);

    if (!list)
        return g_steal_pointer(&ports);
    if (!json_object_is_type(list, json_type_array) || json_object_array_length(list) > MAX_PORTS) {
        vn_api_invalid(error, "%s: a list of at most %d ports expected", path, MAX_PORTS);
        return NULL;
    }
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        g_autofree char *ppath = g_strdup_printf("%s[%zu]", path, i);
        VnPortSpec *p = vn_port_spec_parse(json_object_array_get_idx(list, i), ppath, error);
        if (!p)
            return NULL;
        for (guint j = 0; j < ports->len; j++) {
            VnPortSpec *q = g_ptr_array_index(ports, j);
            if (strcmp(q->port_id, p->port_id) == 0 || strcmp(q->mac, p->mac) == 0) {
                vn_api_invalid(error, "%s: port '%s' (%s) is given twice", ppath, p->port_id,
                               p->mac);
                vn_port_spec_free(p);
                return NULL;
            }
        }
        g_ptr_array_add(ports, p);
    }
    return g_steal_pointer(&ports);
}

/* ------------------------------------------------------------------ JSON */

static json_object *bandwidth_json(const VnBandwidth *b)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "average", json_object_new_int64((gint64)b->average));
    if (b->peak)
        json_object_object_add(o, "peak", json_object_new_int64((gint64)b->peak));
    if (b->burst)
        json_object_object_add(o, "burst", json_object_new_int64((gint64)b->burst));
    return o;
}

json_object *vn_port_spec_to_json(const VnPortSpec *p)
{
    json_object *o = json_object_new_object();
    json_object *ips = json_object_new_array();
    json_object *rules = json_object_new_array();
    json_object *group = json_object_new_object();
    json_object *groups = json_object_new_array();

    json_object_object_add(o, "port_id", json_object_new_string(p->port_id));
    json_object_object_add(o, "network_id", json_object_new_string(p->network_id));
    json_object_object_add(o, "mac", json_object_new_string(p->mac));
    for (guint i = 0; i < p->fixed_ips->len; i++) {
        const VnFixedIp *f = g_ptr_array_index(p->fixed_ips, i);
        json_object *ip = json_object_new_object();
        json_object *sub = json_object_new_object();
        json_object *dns = json_object_new_array();
        json_object_object_add(ip, "ip_address", json_object_new_string(f->address));
        json_object_object_add(sub, "cidr", json_object_new_string(f->cidr));
        if (f->gateway)
            json_object_object_add(sub, "gateway", json_object_new_string(f->gateway));
        for (char **d = f->dns; d && *d; d++)
            json_object_array_add(dns, json_object_new_string(*d));
        json_object_object_add(sub, "dns", dns);
        json_object_object_add(ip, "subnet", sub);
        json_object_array_add(ips, ip);
    }
    json_object_object_add(o, "fixed_ips", ips);
    if (p->mtu)
        json_object_object_add(o, "mtu", json_object_new_int(p->mtu));
    json_object_object_add(o, "network_type", json_object_new_string(vn_net_type_name(p->type)));
    json_object_object_add(o, "physical_network", json_object_new_string(p->physical_network));
    if (p->segmentation_id)
        json_object_object_add(o, "segmentation_id", json_object_new_int(p->segmentation_id));
    json_object_object_add(o, "port_security", json_object_new_boolean(p->port_security));
    for (guint i = 0; i < p->rules->len; i++) {
        const VnSgRule *r = g_ptr_array_index(p->rules, i);
        json_object *j = json_object_new_object();
        json_object_object_add(j, "direction",
                               json_object_new_string(r->ingress ? "ingress" : "egress"));
        json_object_object_add(j, "ethertype",
                               json_object_new_string(r->family == 6 ? "IPv6" : "IPv4"));
        if (r->protocol)
            json_object_object_add(j, "protocol", json_object_new_string(r->protocol));
        if (r->port_min) {
            json_object_object_add(j, "port_range_min", json_object_new_int(r->port_min));
            json_object_object_add(j, "port_range_max", json_object_new_int(r->port_max));
        }
        if (r->remote_ip_prefix)
            json_object_object_add(j, "remote_ip_prefix",
                                   json_object_new_string(r->remote_ip_prefix));
        json_object_array_add(rules, j);
    }
    json_object_object_add(group, "rules", rules);
    json_object_array_add(groups, group);
    json_object_object_add(o, "security_groups", groups);
    if (p->inbound.average || p->outbound.average) {
        json_object *bw = json_object_new_object();
        if (p->inbound.average)
            json_object_object_add(bw, "inbound", bandwidth_json(&p->inbound));
        if (p->outbound.average)
            json_object_object_add(bw, "outbound", bandwidth_json(&p->outbound));
        json_object_object_add(o, "bandwidth", bw);
    }
    return o;
}

json_object *vn_port_specs_to_json(const GPtrArray *ports)
{
    json_object *a = json_object_new_array();

    for (guint i = 0; ports && i < ports->len; i++)
        json_object_array_add(a, vn_port_spec_to_json(g_ptr_array_index(ports, i)));
    return a;
}
