/* agent/virt/nwfilter.c - port security filters (see nwfilter.h). */
#include <stdlib.h>
#include <string.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "agent/virt/nwfilter.h"
#include "agent/virt/virt.h"
#include "agent/virt/xmlutil.h"
#include "api/port.h"

/* Rule priorities: clean-traffic's own rules come first (they are lower numbers), then the
 * DHCP-server drop, the allowed traffic, and last the default drop of each direction. */
#define PRIO_DHCP    "-650"
#define PRIO_ALLOW   "500"
#define PRIO_DEFAULT "1000"

G_DEFINE_AUTOPTR_CLEANUP_FUNC(virNWFilter, virNWFilterFree)

char *vn_nwfilter_name(const char *port_id)
{
    return g_strconcat(VN_NWFILTER_PREFIX, port_id, NULL);
}

/* A stable uuid for the filter of @port_id: a redefinition keeps it. */
static char *filter_uuid(const char *port_id)
{
    g_autofree char *h = g_compute_checksum_for_string(G_CHECKSUM_SHA256, port_id, -1);

    return g_strdup_printf("%.8s-%.4s-5%.3s-8%.3s-%.12s", h, h + 8, h + 13, h + 17, h + 20);
}

static xmlNodePtr rule_node(xmlNodePtr filter, const char *action, const char *direction,
                            const char *priority)
{
    xmlNodePtr r = xmlNewChild(filter, NULL, BAD_CAST "rule", NULL);

    xmlNewProp(r, BAD_CAST "action", BAD_CAST action);
    xmlNewProp(r, BAD_CAST "direction", BAD_CAST direction);
    xmlNewProp(r, BAD_CAST "priority", BAD_CAST priority);
    return r;
}

/* The protocol element of @r: tcp, udp, icmp or all, in its IPv6 form for IPv6 rules. */
static const char *proto_element(const VnSgRule *r)
{
    if (!r->protocol)
        return r->family == 6 ? "all-ipv6" : "all";
    if (strcmp(r->protocol, "icmp") == 0)
        return r->family == 6 ? "icmpv6" : "icmp";
    if (strcmp(r->protocol, "tcp") == 0)
        return r->family == 6 ? "tcp-ipv6" : "tcp";
    return r->family == 6 ? "udp-ipv6" : "udp";
}

static void add_rule(xmlNodePtr filter, const VnSgRule *r)
{
    /* nwfilter's "in" is traffic to the guest: a security group's ingress */
    xmlNodePtr rule = rule_node(filter, "accept", r->ingress ? "in" : "out", PRIO_ALLOW);
    xmlNodePtr p = xmlNewChild(rule, NULL, BAD_CAST proto_element(r), NULL);

    if (r->port_min) {
        g_autofree char *lo = g_strdup_printf("%d", r->port_min);
        g_autofree char *hi = g_strdup_printf("%d", r->port_max);
        xmlNewProp(p, BAD_CAST "dstportstart", BAD_CAST lo);
        xmlNewProp(p, BAD_CAST "dstportend", BAD_CAST hi);
    }
    if (r->remote_ip_prefix) {
        /* the remote end: the source of ingress traffic, the destination of egress */
        g_auto(GStrv) parts = g_strsplit(r->remote_ip_prefix, "/", 2);
        xmlNewProp(p, BAD_CAST(r->ingress ? "srcipaddr" : "dstipaddr"), BAD_CAST parts[0]);
        xmlNewProp(p, BAD_CAST(r->ingress ? "srcipmask" : "dstipmask"), BAD_CAST parts[1]);
    }
}

char *vn_nwfilter_xml(const char *port_id, const GPtrArray *rules, GError **error)
{
    g_autoptr(xmlDoc) doc = xmlNewDoc(BAD_CAST "1.0");
    g_autofree char *name = vn_nwfilter_name(port_id);
    g_autofree char *uuid = filter_uuid(port_id);
    xmlNodePtr f = xmlNewNode(NULL, BAD_CAST "filter");
    xmlNodePtr n;

    (void)error;
    xmlDocSetRootElement(doc, f);
    xmlNewProp(f, BAD_CAST "name", BAD_CAST name);
    xmlNewProp(f, BAD_CAST "chain", BAD_CAST "root");
    xmlNewChild(f, NULL, BAD_CAST "uuid", BAD_CAST uuid);
    /* no MAC, IP or ARP spoofing; only the port's own MAC and $IP */
    xmlNewProp(xmlNewChild(f, NULL, BAD_CAST "filterref", NULL), BAD_CAST "filter",
               BAD_CAST "clean-traffic");
    /* no DHCP server in a guest */
    n = xmlNewChild(rule_node(f, "drop", "out", PRIO_DHCP), NULL, BAD_CAST "udp", NULL);
    xmlNewProp(n, BAD_CAST "srcportstart", BAD_CAST "67");
    xmlNewProp(n, BAD_CAST "srcportend", BAD_CAST "67");
    for (guint i = 0; rules && i < rules->len; i++)
        add_rule(f, g_ptr_array_index(rules, i));
    /* anything else: dropped, both ways, IPv4 and IPv6 (allowed traffic's replies pass:
     * the accept rules above are stateful) */
    xmlNewChild(rule_node(f, "drop", "in", PRIO_DEFAULT), NULL, BAD_CAST "all", NULL);
    xmlNewChild(rule_node(f, "drop", "out", PRIO_DEFAULT), NULL, BAD_CAST "all", NULL);
    xmlNewChild(rule_node(f, "drop", "in", PRIO_DEFAULT), NULL, BAD_CAST "all-ipv6", NULL);
    xmlNewChild(rule_node(f, "drop", "out", PRIO_DEFAULT), NULL, BAD_CAST "all-ipv6", NULL);
    return vn_xml_dump(doc);
}

gboolean vn_nwfilter_define(VnVirtConn *c, const char *port_id, const GPtrArray *rules,
                            GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    g_autofree char *xml = NULL;
    g_autoptr(virNWFilter) f = NULL;

    if (!conn || !(xml = vn_nwfilter_xml(port_id, rules, error)))
        return FALSE;
    f = virNWFilterDefineXML(conn, xml);
    if (!f)
        return vn_virt_error(error, "defining the security filter of port %s", port_id);
    return TRUE;
}

gboolean vn_nwfilter_undefine(VnVirtConn *c, const char *port_id, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    g_autofree char *name = vn_nwfilter_name(port_id);
    g_autoptr(virNWFilter) f = NULL;

    if (!conn)
        return FALSE;
    f = virNWFilterLookupByName(conn, name);
    if (!f) {
        if (virGetLastErrorCode() == VIR_ERR_NO_NWFILTER) {
            virResetLastError();
            return TRUE;
        }
        return vn_virt_error(error, "looking up the security filter of port %s", port_id);
    }
    if (virNWFilterUndefine(f) < 0)
        return vn_virt_error(error, "removing the security filter of port %s", port_id);
    return TRUE;
}

char **vn_nwfilter_list(VnVirtConn *c, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    virNWFilterPtr *filters = NULL;
    GPtrArray *out;
    int n;

    if (!conn)
        return NULL;
    n = virConnectListAllNWFilters(conn, &filters, 0);
    if (n < 0) {
        vn_virt_error(error, "listing security filters");
        return NULL;
    }
    out = g_ptr_array_new();
    for (int i = 0; i < n; i++) {
        const char *name = virNWFilterGetName(filters[i]);
        if (name && g_str_has_prefix(name, VN_NWFILTER_PREFIX))
            g_ptr_array_add(out, g_strdup(name + strlen(VN_NWFILTER_PREFIX)));
        virNWFilterFree(filters[i]);
    }
    free(filters);
    g_ptr_array_add(out, NULL);
    return (char **)g_ptr_array_free(out, FALSE);
}
