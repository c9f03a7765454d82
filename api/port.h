/* api/port.h - a guest's network port as the controller sends it (Neutron's port, bound to
 * a Linux bridge): MAC, fixed IPs with their subnets, MTU, the network's type and segment,
 * port security with its security-group rules, and bandwidth limits.  Validated once,
 * completely, before anything is touched; every error names the field. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

typedef enum { VN_NET_TYPE_FLAT, VN_NET_TYPE_VLAN, VN_NET_TYPE_LAST } VnNetType;

typedef struct {
    char *address; /* canonical text of the address */
    int family;    /* 4 or 6 */
    char *cidr;    /* the subnet, canonical "network/prefix" */
    int prefix;
    char *gateway; /* NULL: none */
    char **dns;    /* NULL-terminated, may be empty */
} VnFixedIp;

typedef struct {
    gboolean ingress; /* else egress */
    int family;       /* 4 or 6 (ethertype IPv4 / IPv6) */
    char *protocol;   /* "tcp", "udp", "icmp", or NULL for any */
    int port_min;     /* tcp/udp: 1-65535, 0 when not given */
    int port_max;
    char *remote_ip_prefix; /* canonical "network/prefix", NULL for any */
} VnSgRule;

typedef struct {
    guint64 average; /* KiB/s, libvirt's unit; 0: no limit */
    guint64 peak;    /* KiB/s */
    guint64 burst;   /* KiB */
} VnBandwidth;

typedef struct {
    char *port_id;        /* [A-Za-z0-9-], 1-64 */
    char *network_id;     /* [A-Za-z0-9-], 1-64 */
    char *mac;            /* lower-case, unicast */
    GPtrArray *fixed_ips; /* VnFixedIp* */
    int mtu;              /* 576-9216; 0 = the host's default_mtu */
    VnNetType type;
    char *physical_network; /* the physnet of [network] physical_interface_mappings */
    int segmentation_id;    /* VLAN id 1-4094 (vlan), 0 (flat) */
    gboolean port_security;
    GPtrArray *rules; /* VnSgRule*, every security group's rules together */
    VnBandwidth inbound, outbound;
} VnPortSpec;

VnPortSpec *vn_port_spec_new(void);
void vn_port_spec_free(VnPortSpec *p);
VnPortSpec *vn_port_spec_copy(const VnPortSpec *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnPortSpec, vn_port_spec_free)

/* Validates the port object @obj (at @path in the request, for messages). */
VnPortSpec *vn_port_spec_parse(json_object *obj, const char *path, GError **error);

/* Validates a list of ports (at most 16; port ids and MACs unique). */
GPtrArray *vn_port_specs_parse(json_object *list, const char *path, GError **error);

/* The port as JSON, in the request's own form (what vn_port_spec_parse reads back). */
json_object *vn_port_spec_to_json(const VnPortSpec *p);
json_object *vn_port_specs_to_json(const GPtrArray *ports);

/* Security-group rules alone (for update_port_security): the "security_groups" list. */
GPtrArray *vn_sg_rules_parse(json_object *groups, const char *path, GError **error);

/* "aa:bb:cc:dd:ee:ff" in lower case from xx:xx.., xx-xx.. or 12 hex digits; unicast only.
 * Caller frees. */
char *vn_mac_normalize(const char *text, GError **error);

const char *vn_net_type_name(VnNetType t);
