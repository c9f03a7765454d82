/* network/port.c - port names and MAC addresses (see port.h). */
#include <string.h>

#include "network/port.h"

GQuark vn_net_error_quark(void)
{
    return g_quark_from_static_string("vn-net-error");
}

char *vn_net_mac_normalize(const char *text, GError **error)
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
        g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_INVALID, "'%s' is not a MAC address",
                    text ? text : "");
        return NULL;
    }
    hex[12] = '\0';
    first = (unsigned)g_ascii_xdigit_value(hex[0]) * 16 + (unsigned)g_ascii_xdigit_value(hex[1]);
    if (first & 1) {
        g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_INVALID,
                    "'%s' is a multicast address, not a port's", text);
        return NULL;
    }
    return g_strdup_printf("%.2s:%.2s:%.2s:%.2s:%.2s:%.2s", hex, hex + 2, hex + 4, hex + 6, hex + 8,
                           hex + 10);
}

char *vn_net_mac_for_port(const char *port_id)
{
    g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, port_id, -1);

    return g_strdup_printf("fa:16:3e:%.2s:%.2s:%.2s", sum, sum + 2, sum + 4);
}

char *vn_net_device_name(const char *prefix, const char *id)
{
    GString *s = g_string_new(prefix);

    for (const char *p = id; *p && s->len < VN_NET_DEVICE_NAME_MAX; p++) {
        if (*p != '-')
            g_string_append_c(s, *p);
    }
    g_string_truncate(s, VN_NET_DEVICE_NAME_MAX);
    return g_string_free(s, FALSE);
}
